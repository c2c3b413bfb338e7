"""Optimizers by name: the built-in table (derived from the classes), real entry-point discovery
from installed metadata, in-process registration, errors that list the names, and OptimizerSet."""
import pytest
import torch

from recis._ops import OPTIM_KINDS
from recis.nn import HashEmbedding, sparse_tables
from recis.optim import (OptimizerNotFoundError, OptimizerSet, SparseOptimizer, SparseSGD, available_optimizers,
                         builtin_optimizers,
                         load_optimizer, optimizer_kind, register_optimizer, unregister_optimizer)


class SignSGD(torch.optim.Optimizer):
    """A dense optimizer a plugin could ship: w -= lr * sign(g), with a step counter as state."""

    def __init__(self, params, lr: float = 0.01):
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self, closure=None):
        for g in self.param_groups:
            for p in g["params"]:
                if p.grad is not None:
                    self.state[p]["steps"] = self.state[p].get("steps", 0) + 1
                    p.add_(torch.sign(p.grad), alpha=-g["lr"])


class HalfSGD(SparseSGD):
    """A sparse optimizer (a SparseOptimizer subclass: sparse without saying so): SGD at half the LR."""

    def __init__(self, tables, lr: float = 0.02):
        super().__init__(tables, lr=lr / 2)


class DeclaredSparse(torch.optim.SGD):
    optimizer_kind = "sparse"


class NotAnOptimizer:
    pass


def _install(tmp_path, monkeypatch, lines):
    """A dist-info directory on sys.path: importlib.metadata finds its entry points like an installed plugin's."""
    info = tmp_path / "optplugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: optplugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[recis.optimizers]\n" + "".join(f"{line}\n" for line in lines))
    monkeypatch.syspath_prepend(str(tmp_path))


def test_builtins_are_the_kernel_kinds_and_torch_optim_classes():
    # the built-ins (installed plugins add their own names to available_optimizers)
    sparse = builtin_optimizers("sparse")
    assert set(sparse) == set(OPTIM_KINDS)  # one vocabulary with the C++ kernels
    for name in sparse:
        cls = load_optimizer(name, "sparse")
        assert issubclass(cls, SparseOptimizer) and cls.kind == name and optimizer_kind(cls) == "sparse"
    dense = builtin_optimizers("dense")
    assert set(dense) <= set(available_optimizers("dense")) and set(sparse) <= set(available_optimizers("sparse"))
    expected = {n.lower(): getattr(torch.optim, n) for n in torch.optim.__all__
                if isinstance(getattr(torch.optim, n), type) and issubclass(getattr(torch.optim, n), torch.optim.Optimizer)
                and n not in ("Optimizer", "LBFGS", "SparseAdam")}
    assert {"sgd", "adam", "adamw", "adagrad", "rmsprop"} <= set(dense) and set(dense) == set(expected)
    for name, cls in expected.items():
        assert load_optimizer(name, "dense") is cls
    both = available_optimizers()
    assert both["adam"] == {"sparse": "recis.optim.optimizers:SparseAdam", "dense": "torch.optim.adam:Adam"}
    assert both["ftrl"] == {"sparse": "recis.optim.optimizers:SparseFTRL"}


def test_unknown_names_list_the_optimizers_of_that_kind():
    with pytest.raises(OptimizerNotFoundError, match=r"optim.dense.name must be one of \['adadelta', .*'sgd'\] "
                                                     r".*entry-point group 'recis.optimizers'\), got 'lbfgs'$"):
        load_optimizer("lbfgs", "dense", "optim.dense")
    with pytest.raises(ValueError, match=r"sparse optimizer name must be one of \['adagrad', 'adam', 'adamw', "
                                         r"'ftrl', 'rowwise_adagrad', 'sgd'\] .*got 'rmsprop' \(a dense optimizer\)"):
        load_optimizer("rmsprop", "sparse")
    with pytest.raises(ValueError, match=r"an optimizer kind must be one of \['sparse', 'dense'\], got 'dens'"):
        load_optimizer("adam", "dens")


def test_an_entry_point_of_an_installed_plugin_is_found_with_its_kind(tmp_path, monkeypatch):
    _install(tmp_path, monkeypatch, ["sign_sgd = test_optim_registry:SignSGD", "half_sgd = test_optim_registry:HalfSGD"])
    assert available_optimizers("dense")["sign_sgd"] == "test_optim_registry:SignSGD"
    assert available_optimizers("sparse")["half_sgd"] == "test_optim_registry:HalfSGD"
    assert "sign_sgd" not in available_optimizers("sparse") and "half_sgd" not in available_optimizers("dense")
    assert load_optimizer("sign_sgd", "dense").__name__ == "SignSGD"
    with pytest.raises(OptimizerNotFoundError, match=r"got 'sign_sgd' \(a dense optimizer\)"):
        load_optimizer("sign_sgd", "sparse")
    # the loaded classes train: SignSGD moves each weight by exactly lr * sign(grad)
    w = torch.nn.Parameter(torch.tensor([1.0, -2.0, 3.0]))
    opt = load_optimizer("sign_sgd", "dense")([w], lr=0.25)
    (w * torch.tensor([2.0, -0.5, 0.0])).sum().backward()
    opt.step()
    assert torch.equal(w.detach(), torch.tensor([0.75, -1.75, 3.0]))
    # HalfSGD on a hash table: a row moves by lr / 2 * grad
    emb = HashEmbedding(2, combiner="sum", seed=0)
    sparse = load_optimizer("half_sgd", "sparse")(sparse_tables(emb), lr=0.5)
    before = emb(torch.tensor([4]), torch.tensor([0, 1])).detach().clone()
    emb(torch.tensor([4]), torch.tensor([0, 1])).sum().backward()
    sparse.step()
    assert torch.allclose(emb(torch.tensor([4]), torch.tensor([0, 1])).detach(), before - 0.25, atol=0, rtol=0)
    # an in-process registration shadows the installed entry point of that name
    register_optimizer("sign_sgd", torch.optim.Rprop)
    try:
        assert load_optimizer("sign_sgd", "dense") is torch.optim.Rprop
    finally:
        unregister_optimizer("sign_sgd")
    assert load_optimizer("sign_sgd", "dense").__name__ == "SignSGD"


def test_broken_or_clashing_entry_points_are_named(tmp_path, monkeypatch):
    cases = [("broken = no_such_module_x:Opt", ImportError,
              r"optimizer 'broken' \(no_such_module_x:Opt\) failed to import: No module named 'no_such_module_x'"),
             ("nothing = test_optim_registry:NotAnOptimizer", TypeError,
              r"entry point 'nothing' \(test_optim_registry:NotAnOptimizer\): an optimizer must be a "
              r"torch.optim.Optimizer subclass"),
             ("adam = test_optim_registry:SignSGD", ValueError,
              r"entry point 'adam' \(test_optim_registry:SignSGD\) would replace the built-in dense optimizer 'adam'")]
    for i, (line, error, message) in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        with monkeypatch.context() as m:
            _install(tmp_path / str(i), m, [line])
            with pytest.raises(error, match=message):  # listing imports the plugins to learn their kinds
                available_optimizers("dense")
            with pytest.raises(error, match=message):
                load_optimizer(line.split(" = ")[0] if error is not ValueError else "no_such_name", "dense")


def test_in_process_registration_and_declared_kinds():
    assert optimizer_kind(DeclaredSparse) == "sparse" and optimizer_kind(SignSGD) == "dense"
    register_optimizer("sign_sgd_local", SignSGD, "dense")
    try:
        assert available_optimizers("dense")["sign_sgd_local"] == "test_optim_registry:SignSGD"
        assert load_optimizer("sign_sgd_local", "dense") is SignSGD
    finally:
        unregister_optimizer("sign_sgd_local")
    with pytest.raises(OptimizerNotFoundError, match="got 'sign_sgd_local'"):
        load_optimizer("sign_sgd_local", "dense")
    with pytest.raises(ValueError, match=r"'x': SignSGD is a dense optimizer, registered as 'sparse'"):
        register_optimizer("x", SignSGD, "sparse")
    with pytest.raises(ValueError, match=r"optimizer 'sgd' would replace the built-in dense optimizer 'sgd'"):
        register_optimizer("sgd", SignSGD)
    with pytest.raises(TypeError, match="must be a torch.optim.Optimizer subclass, got <class"):
        register_optimizer("y", NotAnOptimizer)

    class Wrong(SparseSGD):
        optimizer_kind = "dense"

    with pytest.raises(TypeError, match="SparseOptimizer .* its optimizer_kind must be 'sparse', got 'dense'"):
        register_optimizer("z", Wrong)


def _two_layers(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(3, 4), torch.nn.Linear(4, 1)


def _loss(a, b, step):
    g = torch.Generator().manual_seed(step)
    x, y = torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)
    return ((b(torch.tanh(a(x))) - y) ** 2).mean()


def test_an_optimizer_set_steps_like_its_optimizers_apart_and_resumes_exactly():
    # the reference: SGD with momentum and Adam, each stepped on its own
    a, b = _two_layers(0)
    sgd, adam = torch.optim.SGD(a.parameters(), lr=0.1, momentum=0.9), torch.optim.Adam(b.parameters(), lr=0.01)
    for step in range(6):
        _loss(a, b, step).backward()
        sgd.step(), adam.step(), sgd.zero_grad(), adam.zero_grad()
    # the set, interrupted after 3 steps and resumed from its state_dict into fresh optimizers
    a2, b2 = _two_layers(0)

    def make(x, y):
        return OptimizerSet({"params.0.sgd": torch.optim.SGD(x.parameters(), lr=0.1, momentum=0.9),
                             "dense.adam": torch.optim.Adam(y.parameters(), lr=0.01)})

    opts = make(a2, b2)
    for step in range(3):
        _loss(a2, b2, step).backward()
        opts.step(), opts.zero_grad()
    state = opts.state_dict()
    assert set(state) == {"params.0.sgd", "dense.adam"} and state["dense.adam"]["state"][0]["step"] == 3
    resumed = make(a2, b2)
    resumed.load_state_dict(state)
    for step in range(3, 6):
        _loss(a2, b2, step).backward()
        resumed.step(), resumed.zero_grad()
    for p, q in zip(list(a.parameters()) + list(b.parameters()), list(a2.parameters()) + list(b2.parameters())):
        assert torch.equal(p, q)
    assert [g["lr"] for g in resumed.param_groups] == [0.1, 0.01] and len(resumed) == 2


def test_an_optimizer_set_refuses_shared_parameters_and_other_names():
    a, b = _two_layers(0)
    with pytest.raises(ValueError, match=r"a parameter of shape \(4, 3\) is in both 'x' and 'y'"):
        OptimizerSet({"x": torch.optim.SGD(a.parameters(), lr=0.1), "y": torch.optim.Adam(a.parameters())})
    opts = OptimizerSet({"x": torch.optim.SGD(a.parameters(), lr=0.1), "y": torch.optim.Adam(b.parameters())})
    with pytest.raises(ValueError, match=r"the state has optimizers \['x', 'z'\], this set has \['x', 'y'\] "
                                         r"\(missing: \['y'\], unexpected: \['z'\]\)"):
        opts.load_state_dict({"x": opts["x"].state_dict(), "z": opts["y"].state_dict()})
    with pytest.raises(ValueError, match="non-empty mapping"):
        OptimizerSet({})
