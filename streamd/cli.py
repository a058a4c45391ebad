"""The `streamd` command: continue, plan, demo, train, serve, route, send, subscribe, bench."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger("streamd")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="tiny", help="embedded model (tiny, small) or a LongCat-Video checkpoint folder")
    p.add_argument("--prompt", default="", help="text prompt")
    p.add_argument("--negative-prompt", default="", help="negative prompt (guidance > 1)")
    p.add_argument("--steps", type=_positive_int, help="denoising steps (default: the model's)")
    p.add_argument("--schedule", help="base, enhance_hf, distilled or refine (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--chunk-latents", type=_positive_int, default=4, help="latent frames per segment (4 = 16 frames)")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--no-kv-cache", action="store_true", help="run the uncached block-causal path")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")


def _add_cp_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--context-parallel", type=_positive_int, metavar="N",
                   help="split each denoising step over N ranks on this host (one GPU each; N divides the heads)")


def _add_memory_args(p: argparse.ArgumentParser, plan: bool = False) -> None:
    """The memory plan's settings (model.weights, model.text_encoder, model.shard_weights, model.gpu_memory)."""
    default = "bf16" if plan else None
    p.add_argument("--weights", choices=["bf16", "int8", "fp8"], default=default,
                   help="DiT block weights: bf16 (the model's precision), int8, or fp8 (CUDA 8.9+)")
    p.add_argument("--text-encoder", choices=["auto", "gpu", "cpu"], default="auto" if plan else None,
                   help="where the text encoder lives (auto: the GPU when the plan fits so)")
    p.add_argument("--shard-weights", choices=["auto", "on", "off"], default="auto" if plan else None,
                   help="shard the DiT's blocks over the context-parallel group (auto: when the plan needs it)")
    p.add_argument("--gpu-memory", metavar="SIZE",
                   help="memory per rank the plan may use, e.g. 24GiB (default: free memory at start)")


def _add_compile_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--compile", action="store_true", default=None,
                   help="compile each DiT block with torch.compile (built before the first chunk; see README)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    parser = argparse.ArgumentParser(prog="streamd", description="Live streaming video continuation (LongCat-Video)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("continue", help="continue a video file, LongCat style, and write an MP4")
    p.add_argument("input", type=Path, help="input video file")
    p.add_argument("-o", "--output", type=Path, required=True, help="output MP4")
    p.add_argument("--segments", type=_positive_int, default=2, help="segments to generate")
    _add_sampling_args(p)
    _add_cp_arg(p)
    _add_compile_arg(p)
    _add_memory_args(p)

    p = sub.add_parser("plan", help="the memory plan: what each rank holds, whether it fits, the cheapest fix")
    p.add_argument("--model", default="tiny",
                   help="embedded model, longcat-video (the published checkpoint's configs) or a checkpoint folder")
    _add_cp_arg(p)
    _add_memory_args(p, plan=True)
    p.add_argument("--height", type=_positive_int, help="working height (default: the model's)")
    p.add_argument("--width", type=_positive_int, help="working width (default: the model's)")
    p.add_argument("--max-streams", type=_positive_int, default=1, help="streams that must fit (default 1)")
    p.add_argument("--device", choices=["cuda", "cpu"],
                   help="plan for a GPU (bf16) or the CPU (fp32, host RAM); default: cuda with --gpu-memory or a "
                        "GPU here, else cpu")
    p.add_argument("--json", action="store_true", help="print one JSON object")

    p = sub.add_parser("demo", help="run the daemon, send video over WHIP, receive the generated video over ZeroMQ")
    p.add_argument("--out", type=Path, default=Path("out/demo"), help="output folder")
    p.add_argument("--model", default="tiny", help="embedded model (tiny, small) or a checkpoint folder")
    p.add_argument("--seconds", type=float, default=20.0, help="how long to send live video")
    p.add_argument("--steps", type=_positive_int, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")

    p = sub.add_parser("train", help="train the embedded model on procedural video (resumes from --out)")
    p.add_argument("--out", type=Path, default=Path("out/train"),
                   help="output folder: train_state.pt (resumed from when present), dit/, scheduler/, train.json")
    p.add_argument("--steps", type=_positive_int,
                   help="optimiser steps in all (default: the recipe's, TrainConfig.steps)")
    p.add_argument("--seed", type=int, default=0, help="seed of the weights, the data order and the noise")
    p.add_argument("--fresh", action="store_true", help="start over, ignoring a state file in --out")
    p.add_argument("--init", type=Path, metavar="DIR",
                   help="start from the weights an earlier `streamd train --out DIR` exported (continued training)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the recipe's, TrainConfig.lr)")

    p = sub.add_parser("serve", help="run the daemon: WHIP in, ZeroMQ out")
    p.add_argument("--config", type=Path, help="TOML config file (STREAMD_* variables and flags override it)")
    p.add_argument("--model", help="embedded model (tiny, small) or a checkpoint folder (default tiny)")
    p.add_argument("--http", metavar="HOST:PORT", help="HTTP listener (default 127.0.0.1:8787)")
    p.add_argument("--zmq", metavar="ENDPOINT", help="ZeroMQ publisher endpoint (default tcp://127.0.0.1:5557)")
    p.add_argument("--token", help="bearer token for every door (WHIP, WHEP, /api); for quick local use only: "
                   "every local user can read it in `ps`. Prefer --token-file, STREAMD_HTTP_TOKEN or a systemd "
                   "credential")
    p.add_argument("--token-file", type=Path, metavar="PATH",
                   help="read the bearer token from this file (trailing newline ignored)")
    p.add_argument("--max-streams", type=_positive_int, help="live streams at most (default 4)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--ice-address", action="append", help="offer ICE host candidates only on this address")
    p.add_argument("--mqtt", metavar="HOST:PORT", help="MQTT broker for control (default: no MQTT)")
    p.add_argument("--mqtt-prefix", help="MQTT topic prefix (default streamd/<instance>)")
    p.add_argument("--instance", help="instance name (default: the host name)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    _add_cp_arg(p)
    _add_memory_args(p)
    _add_compile_arg(p)
    p.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune"],
                   help="torch.compile mode of --compile (reduce-overhead: CUDA graphs, CUDA only)")

    p = sub.add_parser("route", help="place WHIP/WHEP sessions across many `serve` instances (their MQTT status)")
    p.add_argument("--config", type=Path, help="TOML file: router settings at top level, [http] and [mqtt] sections")
    p.add_argument("--http", metavar="HOST:PORT", help="HTTP listener (default 127.0.0.1:8780)")
    p.add_argument("--mqtt", metavar="HOST:PORT", help="MQTT broker the instances announce themselves on")
    p.add_argument("--prefix-root", help="instances publish <prefix-root>/<instance>/status (default streamd)")
    p.add_argument("--mode", choices=["proxy", "redirect"], help="proxy (default): forward the offer; redirect: 307")
    p.add_argument("--token", help="bearer token for every door (quick local use only; prefer --token-file, "
                   "STREAMD_ROUTE_TOKEN or the systemd credential http-token)")
    p.add_argument("--token-file", type=Path, metavar="PATH", help="read the bearer token from this file")
    p.add_argument("--status-max-age-s", type=float, metavar="S",
                   help="an instance whose latest status is older is gone (default 15)")
    p.add_argument("--max-instances", type=_positive_int, help="instances tracked at most (default 256)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])

    p = sub.add_parser("send", help="send video to a WHIP endpoint (a reference WHIP client)")
    p.add_argument("url", help="WHIP endpoint, e.g. http://127.0.0.1:8787/whip")
    p.add_argument("--token", help="bearer token")
    p.add_argument("--source", default="testsrc", help="testsrc (a synthetic pattern) or a video file")
    p.add_argument("--seconds", type=float, default=10.0, help="how long to send")
    p.add_argument("--size", default="320x240", help="testsrc size WxH")
    p.add_argument("--ice-address", action="append", help="offer ICE host candidates only on this address")

    p = sub.add_parser("subscribe", help="receive generated frames over ZeroMQ, write MP4 or PNGs")
    p.add_argument("endpoint", nargs="?", default="tcp://127.0.0.1:5557")
    p.add_argument("--stream", help="one stream id (default: the first stream seen)")
    p.add_argument("-o", "--output", type=Path, help="MP4 to write")
    p.add_argument("--png-dir", type=Path, help="folder for one PNG per frame")
    p.add_argument("--frames", type=_positive_int, help="stop after this many frames")
    p.add_argument("--timeout", type=float, default=None,
                   help="stop when nothing arrives for this long (s; default: wait as long as it takes)")
    p.add_argument("--via", metavar="ROUTER_URL",
                   help="ask this router (`streamd route`) for the endpoint of --stream instead of naming it")
    p.add_argument("--token", help="bearer token for the router's /api/status (view role)")

    bench = sub.add_parser("bench", help="benchmarks (JSON output)")
    bsub = bench.add_subparsers(dest="bench", required=True)
    p = bsub.add_parser("denoise", help="one denoising step with and without the KV cache")
    p.add_argument("--model", default="tiny", help="tiny, small, longcat-13.6b-random or a checkpoint folder")
    p.add_argument("--cond-latents", type=_positive_int, default=4)
    p.add_argument("--noise-latents", type=_positive_int, default=4)
    p.add_argument("--height", type=_positive_int)
    p.add_argument("--width", type=_positive_int)
    p.add_argument("--repeats", type=_positive_int, default=5)
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    _add_cp_arg(p)
    p.add_argument("--weights", choices=["bf16", "int8", "fp8"], default="bf16", help="DiT block weights")
    p.add_argument("--shard-weights", action="store_true",
                   help="shard the DiT's blocks over the context-parallel ranks (FSDP2)")
    _add_compile_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (the only output format)")
    p = bsub.add_parser("e2e", help="the daemon end to end (WHIP in, ZeroMQ out) beside the bare engine")
    p.add_argument("--model", default="tiny", help="tiny, small or a checkpoint folder")
    p.add_argument("--seconds", type=float, default=20.0, help="how long the client sends")
    p.add_argument("--steps", type=_positive_int, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--out", type=Path, default=Path("out/bench-e2e"), help="output folder")
    p.add_argument("--json", action="store_true", help="print one JSON object (the only output format)")
    p = bsub.add_parser("stream", help="N live streams from a synthetic real-time source through the engine")
    p.add_argument("--model", default="tiny", help="tiny, small or a checkpoint folder")
    p.add_argument("--streams", type=_positive_int, default=1)
    p.add_argument("--chunks", type=_positive_int, default=40, help="chunks in all, over every stream")
    p.add_argument("--steps", type=_positive_int, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    _add_compile_arg(p)
    p.add_argument("--json", action="store_true", help="print one JSON object (the only output format)")
    p = bsub.add_parser("quality", help="continuation quality on held-out clips vs copy-last and linear "
                                        "extrapolation; 60 s drift; prompt effect")
    p.add_argument("--model", default="tiny", help="an embedded model, a `streamd train` folder or a checkpoint")
    p.add_argument("--clips", type=_positive_int, default=24, help="held-out moving clips to continue")
    p.add_argument("--prompt-scenes", type=int, default=16, help="scenes of the prompt-effect figure (0: skip)")
    p.add_argument("--reversal-scenes", type=int, default=12,
                   help="scenes of the forward/reversed-conditioning motion figure (0: skip)")
    p.add_argument("--drift-seconds", type=float, default=60.0, help="self-continuation length (0: skip)")
    p.add_argument("--steps", type=_positive_int, help="denoising steps (default: the model's)")
    p.add_argument("--guidance", type=float, help="guidance scale (default: the model's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated noise")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--weights", choices=["bf16", "int8", "fp8"], default="bf16",
                   help="DiT block weights (int8 against bf16: the quality cost of quantization)")
    p.add_argument("--json", action="store_true", help="print one JSON object (the only output format)")
    from .bench.gpu import add_gpu_check_parser  # torch-free at import: the GPU check's options

    add_gpu_check_parser(bsub)
    return parser


def _progress_bar(total_label: str):  # -> (callback, close)
    from tqdm import tqdm

    bar = tqdm(desc=total_label, unit="step", file=sys.stderr)

    def update(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return update, bar.close


def _pipeline_and_params(args: argparse.Namespace, text_device: str | None = None, weights: str = "bf16"):
    import torch

    from .engine.params import StreamParams
    from .pipeline import ContinuationPipeline

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipeline = ContinuationPipeline.from_spec(args.model, device=device, text_device=text_device, weights=weights)
    params = StreamParams(prompt=args.prompt, negative_prompt=args.negative_prompt, guidance=args.guidance,
                          steps=args.steps, schedule=args.schedule, seed=args.seed)
    return pipeline, params


def _describe(pipeline) -> str:
    """One line naming the model; random-weight presets say that their output is noise, not a continuation."""
    b = pipeline.bundle
    note = "" if b.trained else " -- RANDOM WEIGHTS (untrained): expect structured noise, not a real continuation"
    return f"model: {b.name} ({b.description}){note}"


def cmd_continue(args: argparse.Namespace) -> int:
    """`streamd continue`: long-video continuation of a file."""
    from .longvideo import continue_file
    from .model.shape import run_plan

    # the plan first: a run that cannot fit is refused before a single weight loads (one stream here)
    plan = run_plan(args.model, args.device, ranks=args.context_parallel or 1, max_streams=1,
                    weights=args.weights or "bf16", text_encoder=args.text_encoder or "auto",
                    shard_weights=args.shard_weights or "auto", gpu_memory=args.gpu_memory,
                    chunk_latents=args.chunk_latents)
    ranks = None
    if (args.context_parallel or 1) > 1:  # the workers load their DiT while this process loads the model
        from .engine.ranks import RankGroup

        ranks = RankGroup.launch(args.context_parallel, args.model, args.device, shard_weights=plan.sharded,
                                 weights=args.weights or "bf16")
    try:
        pipeline, params = _pipeline_and_params(args, text_device=None if plan.text_on_gpu else "cpu",
                                                weights=args.weights or "bf16")
        if ranks is not None:
            ranks.connect(pipeline.dit, plan.sharded)
        if args.compile:  # the first chunk builds the graphs
            from .model.compiled import compile_blocks

            compile_blocks(pipeline.dit)
        print(_describe(pipeline), file=sys.stderr)
        update, close = _progress_bar("denoising")
        try:
            report = continue_file(pipeline, args.input, args.output, params, args.segments,
                                   chunk_latents=args.chunk_latents, use_kv_cache=not args.no_kv_cache,
                                   progress=update, ranks=ranks)
        finally:
            close()
    finally:
        if ranks is not None:
            ranks.close()
    print(f"wrote {report.output}: {report.input_frames} conditioning + {report.generated_frames} generated frames "
          f"at {report.width}x{report.height}, {report.fps:g} fps, in {report.seconds:.1f} s")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """`streamd demo`: the daemon end to end on this machine; writes the generated video and a contact sheet.

    Beside the daemon run, the same model continues the demo's live test pattern and a few held-out procedural
    clips in-process, so the summary can show conditioning frames next to generated ones and a quality figure.
    """
    from .bench.quality import CHUNK_FRAMES, COND_FRAMES, demo_continuations
    from .e2e import E2EConfig, run_e2e
    from .media import contact_sheet, continuation_sheet, fit_frames, read_video, synthetic_clip
    from .pipeline import ContinuationPipeline

    pipeline = ContinuationPipeline.from_spec(args.model, device=None)
    print(_describe(pipeline), file=sys.stderr)
    print(f"starting streamd serve --model {args.model}; sending {args.seconds:g} s of live video over WHIP",
          file=sys.stderr)
    result, report = run_e2e(E2EConfig(model=args.model, seconds=args.seconds, steps=args.steps,
                                       guidance=args.guidance, out_dir=args.out))
    if report.frames == 0:
        print(f"streamd demo: no generated frame arrived; see {args.out / 'daemon.log'}", file=sys.stderr)
        return 1
    sheet = args.out / "contact_sheet.png"
    contact_sheet(read_video(args.out / "generated.mp4").frames, path=sheet)
    # `streamd send`'s test pattern (320x240, seed 0), fitted to the model's size as the daemon does at ingest
    pattern = fit_frames(synthetic_clip(COND_FRAMES + CHUNK_FRAMES, 240, 320).frames, pipeline.bundle.height,
                         pipeline.bundle.width)
    # the same sampling settings as the daemon run, so the figure describes the video the demo wrote
    demo = demo_continuations(pipeline, live_pattern=pattern, steps=args.steps, guidance=args.guidance)
    continuation = args.out / "continuation_sheet.png"
    scale = max(1, 128 // pipeline.bundle.height)
    continuation_sheet(demo.rows, scale=scale, path=continuation)
    p50, p95 = result["latency_p50_s"], result["latency_p95_s"]
    print(f"generated video: {result['output']} ({report.frames} frames, {report.gaps} lost)")
    print(f"contact sheet:   {sheet} (frames of the generated video)")
    print(f"continuation:    {continuation}: per pair of lines, the last 4 conditioning frames | 8 of the 16 "
          "frames generated from them, and under them the true frames")
    for i, label in enumerate(demo.labels):
        print(f"                 row {i + 1}: {label}")
    s = demo.score
    print(f"quality:         PSNR at 1/8 scale, frames 5-16, {demo.scored_clips} held-out moving clips, "
          f"{demo.params.steps} steps, guidance {demo.params.guidance:g}: model "
          f"{s.model_db:.1f} dB, copy-last {s.copy_last_db:.1f} dB ({s.margin_db:+.1f} dB), linear extrapolation "
          f"{s.linear_db:.1f} dB (full table: streamd bench quality --json)")
    print(f"daemon log:      {args.out / 'daemon.log'}")
    print(f"frames/s out:    {result['fps_out']:.1f} (live pacing holds output near the model's 15 fps)")
    if p50 is not None:
        print(f"latency:         p50 {p50:.2f} s, p95 {p95:.2f} s "
              "(live frame arrival -> first frame conditioned on it)")
    print(f"daemon stopped:  exit status {result['daemon_exit']}")
    return 0 if result["daemon_exit"] == 0 else 1


def cmd_train(args: argparse.Namespace) -> int:
    """`streamd train`: the recipe of the shipped `tiny` weights (deterministic by seed, resumable)."""
    from tqdm import tqdm

    from .train.loop import STATE_FILE, TrainConfig, train

    given = {name: value for name, value in (("steps", args.steps), ("lr", args.lr)) if value is not None}
    config = TrainConfig(seed=args.seed, init=str(args.init) if args.init is not None else None, **given)
    state = args.out / STATE_FILE
    resuming = state.exists() and not args.fresh
    print(f"training {config.preset} for {config.steps} steps of {config.batch} clips, seed {config.seed}"
          + (f", from the weights in {config.init}" if config.init else "") + "; "
          + (f"resuming from {state}" if resuming else f"state every {config.checkpoint_every} steps in {state}"),
          file=sys.stderr)
    bar = tqdm(total=config.steps, desc="training", unit="step", file=sys.stderr, dynamic_ncols=True)

    def update(step: int, total: int, loss: float) -> None:
        if bar.n == 0 and step > 1:  # a resumed run starts part-way
            bar.reset(total=total)
        bar.n = step
        bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
        bar.refresh()

    try:
        trainer = train(config, args.out, fresh=args.fresh, progress=update)
    finally:
        bar.close()
    final = trainer.losses[-1] if trainer.losses else None
    print(f"trained {trainer.step_index} steps ({trainer.samples} clips) in {trainer.seconds:.0f} s of training "
          f"time" + (f", last 100-step mean loss {final:.4f}" if final is not None else ""))
    print(f"checkpoint: {args.out / 'dit'} (+ {args.out / 'scheduler'}, {args.out / 'train.json'}); "
          f"resume state: {state}")
    print(f"try it:     streamd continue IN.mp4 -o OUT.mp4 --model {args.out}   (ship it: copy dit/ and "
          f"scheduler/ to streamd/model/weights/{config.preset}/)")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """`streamd bench ...`: print one JSON object."""
    from .bench.denoise import DenoiseBenchConfig, run_denoise_bench
    from .bench.stream import StreamBenchConfig, run_stream_bench

    if args.bench == "e2e":
        from .bench.e2e import run_e2e_bench
        from .e2e import E2EConfig

        result = run_e2e_bench(E2EConfig(model=args.model, seconds=args.seconds, steps=args.steps,
                                         guidance=args.guidance, out_dir=args.out))
    elif args.bench == "quality":
        from .bench.quality import QualityBenchConfig, run_quality_bench

        result = run_quality_bench(QualityBenchConfig(
            model=args.model, clips=args.clips, prompt_scenes=args.prompt_scenes,
            reversal_scenes=args.reversal_scenes, drift_seconds=args.drift_seconds,
            steps=args.steps, guidance=args.guidance, seed=args.seed, device=args.device, weights=args.weights,
        ))
    elif args.bench == "stream":
        result = run_stream_bench(StreamBenchConfig(
            model=args.model, streams=args.streams, chunks=args.chunks, steps=args.steps, guidance=args.guidance,
            device=args.device, compile=bool(args.compile),
        ))
    elif args.bench == "denoise":
        result = run_denoise_bench(DenoiseBenchConfig(
            model=args.model, cond_latents=args.cond_latents, noise_latents=args.noise_latents,
            height=args.height, width=args.width, repeats=args.repeats, device=args.device,
            context_parallel=args.context_parallel or 1, shard_weights=args.shard_weights, weights=args.weights,
            compile=bool(args.compile),
        ))
    elif args.bench == "gpu":
        from .bench.gpu import NoCudaError, run_gpu_check

        try:
            result = run_gpu_check(args)
        except NoCudaError as exc:
            print(f"streamd bench gpu: {exc}", file=sys.stderr)
            return 2
    else:  # pragma: no cover - argparse restricts the choices
        raise SystemExit(f"unknown benchmark {args.bench}")
    print(json.dumps(result, indent=2))
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    """`streamd plan`: the memory plan from the model's configs alone (no weight is read); exit 0 when it fits,
    1 when it does not (the cheapest fix is printed)."""
    from .engine.plan import PlanSettings, cheapest_fix, describe, fix_json, make_plan, parse_bytes
    from .model.shape import device_capacity, model_shape

    device = args.device
    if device is None:
        import torch

        device = "cuda" if args.gpu_memory is not None or torch.cuda.is_available() else "cpu"
    ranks = args.context_parallel or 1
    capacity = (parse_bytes(args.gpu_memory) if args.gpu_memory is not None
                else device_capacity(device) // (ranks if device == "cpu" else 1))
    shape = model_shape(args.model)
    settings = PlanSettings(capacity=capacity, device=device, ranks=ranks, weights=args.weights,
                            shard_weights=args.shard_weights, text_encoder=args.text_encoder, height=args.height,
                            width=args.width, max_streams=args.max_streams)
    plan = make_plan(shape, settings)
    fix = None if plan.fits else cheapest_fix(shape, settings)
    if args.json:
        print(json.dumps({"plan": plan.as_json(), "fix": fix_json(fix)}, indent=2))
    else:
        print(describe(plan, fix))
    return 0 if plan.fits else 1


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--http must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "127.0.0.1", int(port)


def cmd_serve(args: argparse.Namespace) -> int:
    """`streamd serve`: run the daemon until SIGTERM/SIGINT."""
    import asyncio
    import os

    from .app import Daemon
    from .config import ServeConfig

    overrides: dict[str, object] = {
        "model.spec": args.model, "model.device": args.device, "zmq.endpoint": args.zmq, "http.token": args.token,
        "http.token_file": args.token_file, "engine.max_streams": args.max_streams,
        "webrtc.host_addresses": tuple(args.ice_address) if args.ice_address else None,
        "mqtt.broker": args.mqtt, "mqtt.prefix": args.mqtt_prefix, "instance": args.instance,
        "log_level": args.log_level, "engine.context_parallel": args.context_parallel,
        "model.weights": args.weights, "model.text_encoder": args.text_encoder,
        "model.shard_weights": args.shard_weights, "model.gpu_memory": args.gpu_memory,
        "model.compile": args.compile, "model.compile_mode": args.compile_mode,
    }
    if args.http:
        overrides["http.host"], overrides["http.port"] = _host_port(args.http)
    config = ServeConfig.load(args.config, dict(os.environ), overrides)
    logging.getLogger().setLevel(config.log_level.upper() if not args.verbose else "DEBUG")
    from .engine.ranks import under_torchrun, worker_main_from_env

    if under_torchrun() and int(os.environ["RANK"]) != 0:  # several hosts: torchrun started every rank
        m = config.model
        from .model.shape import run_plan

        plan = run_plan(m.spec, m.device, ranks=config.engine.context_parallel,
                        max_streams=config.engine.max_streams, weights=m.weights, text_encoder=m.text_encoder,
                        shard_weights=m.shard_weights, gpu_memory=m.gpu_memory)  # as rank 0 decides
        return worker_main_from_env(m.spec, m.device, config.engine.collective_timeout_s, m.distilled,
                                    shard_weights=plan.sharded, weights=m.weights)
    return asyncio.run(Daemon(config).run())


def cmd_route(args: argparse.Namespace) -> int:
    """`streamd route`: the router until SIGTERM/SIGINT."""
    import asyncio
    import os

    from .route.config import RouteConfig
    from .route.server import Router

    overrides: dict[str, object] = {
        "mqtt.broker": args.mqtt, "prefix_root": args.prefix_root, "mode": args.mode, "http.token": args.token,
        "http.token_file": args.token_file, "status_max_age_s": args.status_max_age_s,
        "max_instances": args.max_instances, "log_level": args.log_level,
    }
    if args.http:
        overrides["http.host"], overrides["http.port"] = _host_port(args.http)
    config = RouteConfig.load(args.config, dict(os.environ), overrides)
    logging.getLogger().setLevel(config.log_level.upper() if not args.verbose else "DEBUG")
    return asyncio.run(Router(config).run())


def cmd_send(args: argparse.Namespace) -> int:
    """`streamd send`: a WHIP client."""
    import asyncio

    from .clients.send import SendError, send

    width, _, height = args.size.partition("x")
    try:
        report = asyncio.run(send(args.url, token=args.token, source=args.source, seconds=args.seconds,
                                  width=int(width), height=int(height),
                                  ice_addresses=tuple(args.ice_address or ())))
    except SendError as exc:  # refused, not connected, or the daemon ended the session under us: say why
        print(f"streamd send: {exc}", file=sys.stderr)
        return 1
    print(f"sent {report.frames_sent} frames as stream {report.stream_id} in {report.seconds:.1f} s")
    return 0


def cmd_subscribe(args: argparse.Namespace) -> int:
    """`streamd subscribe`: a ZeroMQ subscriber writing MP4 or PNGs."""
    from .clients.subscribe import endpoint_via, subscribe

    if args.via:
        if not args.stream:
            raise ValueError("--via needs --stream: the router finds the instance of one stream")
        args.endpoint = endpoint_via(args.via, args.stream, token=args.token)
        print(f"stream {args.stream} is published on {args.endpoint}", file=sys.stderr)

    def waiting(seconds: float) -> None:
        print(f"waiting for the first frame from {args.endpoint} ({seconds:.0f} s)...", file=sys.stderr, flush=True)

    report = subscribe(args.endpoint, stream=args.stream, frames=args.frames, output=args.output,
                       png_dir=args.png_dir, timeout_s=args.timeout, on_wait=waiting)
    print(f"received {report.frames} frames from {', '.join(sorted(report.streams)) or 'no stream'} "
          f"({report.gaps} lost, {report.invalid} invalid) in {report.seconds:.1f} s")
    return 0 if report.frames else 1


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `streamd` console script."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # ICE and RTP libraries log every candidate pair at INFO
        for noisy in ("aioice", "aiortc"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
    handlers = {"continue": cmd_continue, "plan": cmd_plan, "demo": cmd_demo, "train": cmd_train, "bench": cmd_bench,
                "serve": cmd_serve, "route": cmd_route, "send": cmd_send, "subscribe": cmd_subscribe}
    try:
        return handlers[args.command](args)
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        print(f"streamd {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
