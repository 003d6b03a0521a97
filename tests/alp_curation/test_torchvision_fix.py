"""Tests for alp_curation.torchvision_fix.

Most checks run in a fresh interpreter: the fix acts at import time and torchvision can be imported
only once per process, so only a new process shows what a user's program sees. Every test holds on
both kinds of machine: where torchvision's compiled ops load (GPU wheels) the fix stands aside and
the same assertions then check torchvision's own kernels.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from alp_curation.torchvision_fix import nms_reference_kernel

import numpy as np
import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_python(code: str, *, stdin: str = "", env: dict[str, str] | None = None):
    """Run ``code`` in a fresh interpreter from the repository root; return the finished process."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=full_env,
        timeout=300,
    )


def brute_force_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy NMS spelled out with Python loops: the definition the kernel must reproduce."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])  # stable for equal scores
    kept: list[int] = []
    for i in order:
        x1, y1, x2, y2 = boxes[i]
        suppressed = False
        for k in kept:
            a1, b1, a2, b2 = boxes[k]
            inter = max(0.0, min(x2, a2) - max(x1, a1)) * max(0.0, min(y2, b2) - max(y1, b1))
            union = (x2 - x1) * (y2 - y1) + (a2 - a1) * (b2 - b1) - inter
            if inter / union > threshold:
                suppressed = True
                break
        if not suppressed:
            kept.append(i)
    return kept


def random_boxes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random (x1, y1, x2, y2) boxes in a 100 x 100 frame, crowded to overlap; their scores."""
    corner = rng.uniform(0, 80, size=(n, 2))
    size = rng.uniform(2, 40, size=(n, 2))
    return np.concatenate([corner, corner + size], axis=1), rng.permutation(n) / n


NMS_CASES = [(1, 0.5), (7, 0.3), (60, 0.5), (200, 0.7), (200, 0.1)]  # (boxes, IoU threshold)

# Feature value = column index, so a bilinear sample at x reads x and each bin reads its centre.
# aligned=True shifts by half a pixel: bins of width 2 from x = 1.5 have centres 2.5, 4.5, ...
ROI_ALIGN_ON_A_RAMP = """
    ramp = torch.arange(16.0).expand(1, 2, 16, 16).contiguous()  # (N=1, C=2, H=16, W=16)
    rois = [torch.tensor([[2.0, 2.0, 10.0, 10.0]])]
    out = torchvision.ops.roi_align(
        ramp, rois, output_size=4, spatial_scale=1.0, sampling_ratio=2, aligned=True
    )  # (1, 2, 4, 4)
"""
ROI_ALIGN_EXPECTED = [[[[2.5, 4.5, 6.5, 8.5]] * 4] * 2]

# One fresh interpreter runs everything a program does after importing the fix; the tests below
# each check one part of its report. TORCHDYNAMO_DISABLE: torchvision wraps roi_align's Python
# path in torch.compile, which costs tens of seconds of C++ compilation on a CPU; the slow test
# test_roi_align_runs_compiled_after_the_fix covers the compiled run.
AFTER_FIX = """
    import json, sys
    import alp_curation.torchvision_fix as fix

    def hooks():
        return sum(type(f).__name__ == "_BoxesGuardHook" for f in sys.meta_path)

    report = {"state": fix.STATE, "hooks_before": hooks(), "apply_again": fix.apply()}
    report["hooks_after_apply"] = hooks()
    import torch, torchvision
    report["hooks_after_import"] = hooks()
    report["apply_after_import"] = fix.apply()

    report["nms"] = []
    for case in json.load(sys.stdin):
        for dtype in (torch.float64, torch.float32):
            boxes = torch.tensor(case["boxes"], dtype=dtype)
            scores = torch.tensor(case["scores"], dtype=dtype)
            report["nms"].append(torchvision.ops.nms(boxes, scores, case["threshold"]).tolist())

    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8, 0.7])
    kept = torchvision.ops.batched_nms(boxes, scores, torch.tensor([0, 0, 1]), 0.5)
    report["batched_nms"] = kept.tolist()
    {roi_align}
    report["roi_align"] = out.tolist()
    print(json.dumps(report))
""".replace("    {roi_align}\n", ROI_ALIGN_ON_A_RAMP.lstrip("\n"))


@pytest.fixture(scope="module")
def nms_cases() -> list[dict]:
    rng = np.random.default_rng(0)
    cases = []
    for n, threshold in NMS_CASES:
        boxes, scores = random_boxes(rng, n)
        cases.append({"boxes": boxes.tolist(), "scores": scores.tolist(), "threshold": threshold})
    return cases


@pytest.fixture(scope="module")
def after_fix(nms_cases: list[dict]) -> dict:
    proc = run_python(AFTER_FIX, stdin=json.dumps(nms_cases), env={"TORCHDYNAMO_DISABLE": "1"})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_plain_import_fails_exactly_when_the_fix_patches(after_fix: dict) -> None:
    plain = run_python("import torchvision")
    if plain.returncode != 0:
        # This machine: CUDA torchvision wheel on CPU torch.
        assert "operator torchvision::" in plain.stderr and "does not exist" in plain.stderr
        assert after_fix["state"] == "patched"
    else:
        # A machine whose torchvision loads its compiled ops: the fix must stand aside.
        assert after_fix["state"] == "compiled ops"


def test_apply_twice_is_a_no_op(after_fix: dict) -> None:
    hooks = [after_fix[k] for k in ("hooks_before", "hooks_after_apply", "hooks_after_import")]
    if after_fix["state"] == "patched":
        assert after_fix["apply_again"] == after_fix["apply_after_import"] == "already patched"
        # One hook, not two; it removes itself once torchvision.ops.boxes is patched.
        assert hooks == [1, 1, 0]
    else:
        assert after_fix["apply_again"] == after_fix["apply_after_import"] == "compiled ops"
        assert hooks == [0, 0, 0]


def test_nms_after_the_fix_matches_brute_force_greedy_nms(
    after_fix: dict, nms_cases: list[dict]
) -> None:
    for i, case in enumerate(nms_cases):
        boxes, scores = np.array(case["boxes"]), np.array(case["scores"])
        expected = brute_force_nms(boxes, scores, case["threshold"])
        assert after_fix["nms"][2 * i] == expected, f"float64, case {NMS_CASES[i]}"
        assert after_fix["nms"][2 * i + 1] == expected, f"float32, case {NMS_CASES[i]}"


def test_batched_nms_keeps_classes_apart_after_the_fix(after_fix: dict) -> None:
    # Box 1 overlaps box 0 (same class) with IoU 0.81 and goes; box 2 is another class and stays.
    assert after_fix["batched_nms"] == [0, 2]


def test_roi_align_runs_torchvisions_python_path_after_the_fix(after_fix: dict) -> None:
    assert after_fix["roi_align"] == ROI_ALIGN_EXPECTED


@pytest.mark.slow
def test_roi_align_runs_compiled_after_the_fix() -> None:
    script = "import json\nimport alp_curation.torchvision_fix\nimport torch, torchvision\n"
    proc = run_python(
        script + textwrap.dedent(ROI_ALIGN_ON_A_RAMP) + "print(json.dumps(out.tolist()))"
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == ROI_ALIGN_EXPECTED


def test_leaves_compiled_ops_alone() -> None:
    """Where torchvision's ``_C`` library loads, the fix must change nothing.

    Stands in for that library: loading it runs its TORCH_LIBRARY block, which defines
    ``torchvision::nms`` with a real kernel before anything imports torchvision. Here the test
    defines the schema with a sentinel kernel first, then imports the fix and checks that the
    sentinel still answers and nothing else was registered or hooked.
    """
    proc = run_python(
        """
        import sys
        import torch
        lib = torch.library.Library("torchvision", "FRAGMENT")
        lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        sentinel = lambda dets, scores, iou_threshold: torch.full((1,), 42, dtype=torch.long)
        lib.impl("nms", sentinel, "CompositeExplicitAutograd")
        import alp_curation.torchvision_fix as fix
        hooked = any(type(f).__name__ == "_BoxesGuardHook" for f in sys.meta_path)
        sentinel = torch.ops.torchvision.nms(torch.zeros(3, 4), torch.zeros(3), 0.5).tolist()
        print(fix.STATE, fix.apply(), hooked, sentinel, hasattr(torch.ops.torchvision, "qnms"))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "compiled ops compiled ops False [42] False"


# The kernel itself, in this process (it is a plain function of tensors).


@pytest.mark.parametrize("seed", range(5))
def test_kernel_matches_brute_force_with_tied_scores(seed: int) -> None:
    rng = np.random.default_rng(seed)
    boxes, _ = random_boxes(rng, 80)
    scores = rng.integers(0, 5, size=80) / 4.0  # many ties: the visiting order must be stable
    kept = nms_reference_kernel(torch.from_numpy(boxes), torch.from_numpy(scores), 0.4)
    assert kept.dtype == torch.long
    assert kept.tolist() == brute_force_nms(boxes, scores, 0.4)


@pytest.mark.parametrize(("n", "threshold"), [(1100, 0.5), (1600, 0.7)])
def test_kernel_matches_brute_force_across_blocks(n: int, threshold: float) -> None:
    # More boxes than one block of the vectorised pass (512): kept boxes of earlier blocks must
    # suppress later ones exactly as the box-by-box definition does.
    rng = np.random.default_rng(n)
    boxes, scores = random_boxes(rng, n)
    kept = nms_reference_kernel(torch.from_numpy(boxes), torch.from_numpy(scores), threshold)
    assert kept.tolist() == brute_force_nms(boxes, scores, threshold)


def test_kernel_edge_cases() -> None:
    empty = nms_reference_kernel(torch.zeros(0, 4), torch.zeros(0), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.long
    # Identical boxes: IoU 1 > 0.99 suppresses; a threshold of 1.0 keeps both (strict ">").
    same = torch.tensor([[0.0, 0, 1, 1], [0.0, 0, 1, 1]])
    assert nms_reference_kernel(same, torch.tensor([0.1, 0.9]), 0.99).tolist() == [1]
    assert nms_reference_kernel(same, torch.tensor([0.1, 0.9]), 1.0).tolist() == [1, 0]
    # Integer boxes (what qnms hands over as int_repr()) give the same answer as floats.
    ints = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10], [20, 20, 30, 30]], dtype=torch.uint8)
    scores = torch.tensor([0.5, 0.9, 0.1])
    assert nms_reference_kernel(ints, scores, 0.5).tolist() == [1, 2]
    with pytest.raises(RuntimeError, match=r"boxes should have shape \(N, 4\), got \(3, 3\)"):
        nms_reference_kernel(torch.zeros(3, 3), torch.zeros(3), 0.5)
    with pytest.raises(RuntimeError, match=r"scores should have shape \(3,\), got \(2,\)"):
        nms_reference_kernel(torch.zeros(3, 4), torch.zeros(2), 0.5)
