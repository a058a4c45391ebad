"""`streamd bench quality --json`: one JSON object with every figure, baselines measured in the same run."""

from __future__ import annotations

import json
import subprocess
import sys


def test_bench_quality_json() -> None:
    proc = subprocess.run([sys.executable, "-m", "streamd.cli", "bench", "quality", "--json", "--clips", "3",
                           "--drift-seconds", "10", "--prompt-scenes", "2", "--reversal-scenes", "2"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["model"] == "tiny" and r["trained"] is True and r["clips"] == 3
    assert r["training"]["steps_done"] > 0 and r["training"]["samples_seen"] > 0
    assert sum(r["clip_kinds"].values()) == 3 and set(r["clip_kinds"]) <= {"objects", "pan", "zoom", "rotate"}
    for metric in ("psnr", "ssim"):
        for scale in ("full", "pool8"):
            table = r[metric][scale]
            assert set(table) == {"model", "copy_last", "linear", "codec"}
            for horizons in table.values():
                assert set(horizons) == {"1-4", "5-8", "9-16", "5-16"}
    # the baselines are what they claim to be: motion makes copy-last worse with the horizon, and the codec
    # ceiling (the true frames through the codec) beats every prediction
    copy = r["psnr"]["pool8"]["copy_last"]
    assert copy["1-4"] > copy["9-16"]
    assert all(r["psnr"]["pool8"]["codec"]["5-16"] > r["psnr"]["pool8"][m]["5-16"]
               for m in ("model", "copy_last", "linear"))
    assert 0 < r["ssim"]["full"]["codec"]["1-4"] <= 1
    goal = r["goal_5_16_pool8_db"]
    assert goal["model_minus_copy_last"] == round(r["psnr"]["pool8"]["model"]["5-16"] - copy["5-16"], 3)
    drift = r["drift"]
    assert drift["frames"] == 150 and len(drift["per_10s"]["model"]) == len(drift["per_10s"]["real"]) == 1
    for window in drift["per_10s"]["model"] + drift["per_10s"]["real"]:
        assert 0 <= window["mean"] <= 255 and window["std"] > 0 and window["change"] >= 0
    prompt = r["prompt_effect"]
    assert prompt["scenes"] == 2 and prompt["runs"] == 4 and prompt["cond_frames"] == 1
    assert abs(prompt["agrees_with_prompt"] + prompt["agrees_with_opposite"] + prompt["undetermined"] - 1) < 0.01
    reversal = r["motion_reversal"]
    assert reversal["scenes"] == 2 and reversal["lost"] + len(reversal["x_displacement_px"]["true"]) == 2
    # the crossing scenes alternate direction, so the true motions have opposite signs
    assert reversal["lost"] or reversal["x_displacement_px"]["true"][0] > 0 > reversal["x_displacement_px"]["true"][1]
    assert reversal["both"] <= min(reversal["forward_agrees"], reversal["reversed_agrees"])
