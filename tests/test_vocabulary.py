"""The one vocabulary (recis.vocabulary) against the C++ core's own (recis._C.vocabulary()), and
what derives from it: the optimizers' slots and hyperparameters, the state-dict slot kind."""
import copy
import importlib
import sys

import pytest
import torch

from recis import _C, vocabulary
from recis.nn import HashEmbedding, sparse_tables
from recis.optim import (SparseAdagrad, SparseAdam, SparseAdamW, SparseFTRL, SparseRowwiseAdagrad, SparseSGD,
                         builtin_optimizers)
from recis.vocabulary import OPTIMIZERS, VocabularyMismatchError, check_native


def test_cpp_and_python_agree():
    check_native(_C.vocabulary())  # what recis._ops does at import


@pytest.mark.parametrize("path, value, named", [
    (("optimizers", "adam", "code"), 7, "vocabulary['optimizers']['adam']['code'] is 3 in Python but 7 in C++"),
    (("optimizers", "ftrl", "hyper"), ("lr", "beta", "l1", "l2"),
     "vocabulary['optimizers']['ftrl']['hyper'] is ('lr', 'beta', 'l1', 'l2', 'lr_power') in Python but "
     "('lr', 'beta', 'l1', 'l2') in C++"),
    (("optimizers", "adagrad", "slots_per_dim"), 2, "vocabulary['optimizers']['adagrad']['slots_per_dim'] is 1"),
    (("combiners", "mean"), 2, "vocabulary['combiners']['mean'] is 1 in Python but 2 in C++"),
    (("lookup_modes", "train_with_grad"), 3, "vocabulary['lookup_modes']['train_with_grad']"),
    (("missing_modes", "init"), 0, "vocabulary['missing_modes']['init']"),
    (("init_kinds", "truncated_normal"), 4, "vocabulary['init_kinds']['truncated_normal']"),
    (("evict_policies", "lfu"), 2, "vocabulary['evict_policies']['lfu']"),
    (("hashing", "golden"), 1, "vocabulary['hashing']['golden']"),
    (("reduction_lanes", "rowwise_adagrad"), 8, "vocabulary['reduction_lanes']['rowwise_adagrad'] is 16 in Python"),
])
def test_a_difference_fails_naming_the_item(path, value, named):
    native = copy.deepcopy(_C.vocabulary())
    node = native
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(VocabularyMismatchError) as e:
        check_native(native)
    assert named in str(e.value)


def test_missing_and_extra_items_are_named():
    native = copy.deepcopy(_C.vocabulary())
    del native["optimizers"]["sgd"]
    with pytest.raises(VocabularyMismatchError, match=r"\['optimizers'\]\['sgd'\] is .* in Python but missing in C\+\+"):
        check_native(native)
    native = copy.deepcopy(_C.vocabulary())
    native["combiners"]["max"] = 3
    with pytest.raises(VocabularyMismatchError, match=r"\['combiners'\]\['max'\] is 3 in C\+\+ but missing in Python"):
        check_native(native)


def test_import_fails_loudly_on_a_mismatched_core(monkeypatch):
    """recis._ops, which loads the core, refuses a core built with another vocabulary."""
    bad = copy.deepcopy(_C.vocabulary())
    bad["optimizers"]["rowwise_adagrad"]["slots_per_row"] = 2
    monkeypatch.setattr(_C, "vocabulary", lambda: bad)
    monkeypatch.delitem(sys.modules, "recis._ops")  # a fresh import of it (restored afterwards)
    with pytest.raises(VocabularyMismatchError) as e:
        importlib.import_module("recis._ops")
    assert str(e.value) == ("recis: the C++ core and recis.vocabulary disagree: vocabulary['optimizers']"
                            "['rowwise_adagrad']['slots_per_row'] is 1 in Python but 2 in C++; rebuild recis._C "
                            "from the same checkout (make build)")


def test_the_builtin_sparse_optimizers_are_the_vocabulary():
    assert {name: cls.kind for name, cls in builtin_optimizers("sparse").items()} == {k: k for k in OPTIMIZERS}


@pytest.mark.parametrize("cls, options, slots", [
    (SparseSGD, {}, []),
    (SparseAdagrad, {"initial_accumulator_value": 0.5}, [0.5] * 3),
    (SparseRowwiseAdagrad, {"initial_accumulator_value": 0.25}, [0.25]),
    (SparseAdam, {}, [0.0] * 6),
    (SparseAdamW, {}, [0.0] * 6),
    (SparseFTRL, {"initial_accumulator_value": 0.2}, [0.0] * 3 + [0.2] * 3),
])
def test_a_new_row_gets_the_layouts_slots(cls, options, slots):
    emb = HashEmbedding(3)
    opt = cls(sparse_tables(emb), **options)
    emb(torch.tensor([5]), torch.tensor([0, 1])).sum().backward()
    opt.step()
    group = sparse_tables(emb)[0].group
    table = group.tables[0]
    fresh = torch.tensor([77])
    table.find_or_insert(fresh)
    exported = table.export()
    row = exported["ids"].tolist().index(77)
    assert exported["slots"][row].tolist() == pytest.approx(slots)
    assert exported["slots"].shape[1] == OPTIMIZERS[cls.kind].slot_width(3)


def test_hyper_follows_the_layout():
    emb = HashEmbedding(2)
    opt = SparseAdam(sparse_tables(emb), lr=0.5, betas=(0.8, 0.7), eps=1e-3, weight_decay=0.1)
    assert opt.hyper(opt.param_groups[0], 4) == [0.5, 0.8, 0.7, 1e-3, 0.1, 4.0]
    opt = SparseFTRL(sparse_tables(HashEmbedding(2)), lr=0.3, beta=2.0, l1=0.1, l2=0.2, lr_power=-0.4)
    assert opt.hyper(opt.param_groups[0], 9) == [0.3, 2.0, 0.1, 0.2, -0.4]


def test_a_sparse_optimizer_needs_a_vocabulary_kind():
    class NoKind(SparseSGD):
        kind = "lion"

    with pytest.raises(TypeError, match=r"NoKind.kind must name an optimizer kind of the kernels .*'lion'"):
        NoKind(sparse_tables(HashEmbedding(2)))


def test_optimizer_of_code():
    assert [vocabulary.optimizer_of_code(c).name for c in range(6)] == list(OPTIMIZERS)
    with pytest.raises(ValueError, match="unknown optimizer kind code 9"):
        vocabulary.optimizer_of_code(9)


def test_the_state_dict_saves_the_slot_kind_by_its_code():
    emb = HashEmbedding(2)
    SparseFTRL(sparse_tables(emb))
    emb(torch.tensor([1]), torch.tensor([0, 1])).sum().backward()
    state = emb.state_dict()
    assert int(state["table._group.slot_kind"]) == vocabulary.OPTIM_KINDS["ftrl"]
    fresh = HashEmbedding(2)
    fresh.load_state_dict(state)
    assert fresh.table.group.slot_kind == "ftrl"  # adopted from the code, for the optimizer created next


def test_triton_kernels_compile_with_the_vocabulary_constants():
    """The kernels that take their codes and hash constants from the vocabulary as tl.constexpr
    globals compile for a CUDA target (no GPU needed): Triton's interpreter, which the other tests
    use, does not run the compiler's front end, which refuses non-constexpr globals."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget

    from recis.gpu.kernels import init, optim, sketch

    def compile_(fn, sig, constexprs):
        sig = {**sig, **{name: "constexpr" for name in constexprs}}
        try:
            triton.compile(triton.compiler.ASTSource(fn=fn, signature=sig, constexprs=constexprs),
                           target=GPUTarget("cuda", 90, 32))
        except (RuntimeError, FileNotFoundError) as e:  # no CUDA toolchain (ptxas) in this triton install
            if "ptxas" in str(e):
                pytest.skip(f"triton cannot assemble for CUDA here: {e}")
            raise

    compile_(sketch.sketch_kernel, {"counts_ptr": "*i64", "ids_ptr": "*i64", "ns_ptr": "*i64", "add_ptr": "*i64",
                                    "sel_ptr": "*i64", "est_ptr": "*i64", "n": "i32", "width": "i64"},
             {"DEPTH": 2, "COMMIT": True, "BLOCK": 64})
    init_sig = {"ids_ptr": "*i64", "ns_ptr": "*i64", "ns_key_ptr": "*i64", "dst_rows_ptr": "*i64", "emb_ptr": "*fp32",
                "n": "i32", "dim": "i32", "a": "fp32", "b": "fp32", "c": "fp32"}
    for kind in vocabulary.INIT_KINDS.values():
        compile_(init.init_rows_kernel, init_sig, {"KIND": kind, "BLOCK_N": 16, "BLOCK_D": 16})
    optim_sig = {"emb_ptr": "*fp32", "slots_ptr": "*fp32", "rows_ptr": "*i64", "grads_ptr": "*fp32",
                 "finite_ptr": "*i8", "n": "i32", "dim": "i32", "width": "i32", **{f"h{i}": "fp32" for i in range(7)}}
    for code in vocabulary.OPTIM_KINDS.values():
        compile_(optim.sparse_update_kernel, optim_sig, {"KIND": code, "SQRT": False, "BLOCK_R": 8, "BLOCK_D": 16})
