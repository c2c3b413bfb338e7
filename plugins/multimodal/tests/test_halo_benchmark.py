"""benchmarks/halo.py's validation search: the same stages, budget and rule for both methods
(a fake experiment scores each setting, so no job runs)."""
import importlib.util
import math
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
_spec = importlib.util.spec_from_file_location("halo_bench", os.path.join(ROOT, "benchmarks", "halo.py"))
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


class FakeExperiment:
    """Scores a function of (beta, lr, steps) only: the more it moves, the fewer defects and the darker."""

    def __init__(self):
        self.results = {"pretrained": {"patch_defect_rate": 0.3, "video_rm_reward": -0.4, "content": 1.0}}
        self.calls = []

    def post_train(self, objective, name, **setting):
        tag, kb, kl, ks = bench.KEYS[objective]
        move = setting[kl] * setting[ks] * 1e4 / (1 + setting[kb] / 1000)   # 0 .. ~30
        r = {"patch_defect_rate": 0.3 / (1 + move), "video_rm_reward": -0.4 + 0.01 * move,
             "content": 1 / (1 + 0.5 * move)}
        self.calls.append((objective, name, setting))
        self.results[name] = r
        return r


def test_both_methods_get_the_same_budget_stages_and_rule():
    exp = FakeExperiment()
    tried = {o: bench.search(exp, o, 300) for o in ("diffusion_dpo", "gran_dpo")}
    assert len(tried["diffusion_dpo"]) == len(tried["gran_dpo"]) == bench.PER_METHOD == 17
    names = [n for _, n, _ in exp.calls]
    assert len(set(names)) == len(names) == 34                      # every setting distinct, each run once
    shared = {o: [(s[bench.KEYS[o][1]], s[bench.KEYS[o][2]], s[bench.KEYS[o][3]]) for s, _ in tried[o]]
              for o in tried}
    assert shared["diffusion_dpo"][:13] == shared["gran_dpo"][:13]   # stages 1 and 2: the same (beta, lr, steps)
    assert sorted({b for b, _, _ in shared["diffusion_dpo"][:9]}) == [100.0, 1000.0, 5000.0]
    assert all(s["lam"] == 1.0 and s["delta"] == 0.3 for s, _ in tried["gran_dpo"][:13])
    pre = exp.results["pretrained"]
    for o, cands in tried.items():                                   # the rule, recomputed here
        ok = [(s, r) for s, r in cands if 0.67 <= r["content"] <= 1.5 and r["video_rm_reward"] >= pre["video_rm_reward"]]
        assert bench.choose(cands, pre) == min(ok, key=lambda c: c[1]["patch_defect_rate"])
        assert any(r["content"] < 0.67 for _, r in cands)            # the band excluded something


def test_choose_falls_back_to_content_closest_to_one():
    pre = {"video_rm_reward": 0.0}
    cands = [({"a": 1}, {"content": 0.2, "video_rm_reward": 1.0, "patch_defect_rate": 0.0}),
             ({"a": 2}, {"content": 1.7, "video_rm_reward": 1.0, "patch_defect_rate": 0.1}),
             ({"a": 3}, {"content": 1.0, "video_rm_reward": -1.0, "patch_defect_rate": 0.2})]
    assert bench.choose(cands, pre)[0] == {"a": 3}
    assert math.isclose(bench._r(1e-6 * 3), 3e-6) and bench._r(1e-7 * 0.3) == 3e-8
