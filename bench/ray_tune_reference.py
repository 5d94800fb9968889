#!/usr/bin/env python3
"""The peer of `convsweep-bench coordinator`: the same number of trivial trials, each reporting
EPOCHS results one by one, through Ray Tune on this machine (local cluster of its cores, no
dashboard). Prints and writes (--json) trials/s and results/s from `Tuner.fit()` start to end, and
checks that every trial ended without error with all its results.

Run by the bench with the Python that bench/setup-peers.sh installs into .deps/ray; by hand:
    .deps/ray/bin/python bench/ray_tune_reference.py --trials 500 --epochs 10 --json out.json
"""

import argparse
import json
import os
import tempfile
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, required=True)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--cpus", type=int, default=os.cpu_count())
    ap.add_argument(
        "--cpus-per-trial",
        type=float,
        default=1.0,
        help="CPUs each trial reserves (Ray Tune's default, 1, runs one trial per core at a time)",
    )
    ap.add_argument("--json")
    args = ap.parse_args()

    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "0")
    import ray
    from ray import tune

    ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False, configure_logging=False)

    def trial(config):
        for epoch in range(1, config["epochs"] + 1):
            tune.report({"epoch": epoch, "test_acc": 0.5})

    storage = tempfile.mkdtemp(prefix="ray-tune-bench-")
    tuner = tune.Tuner(
        tune.with_resources(trial, {"cpu": args.cpus_per_trial}),
        param_space={"epochs": args.epochs, "seed": tune.grid_search(list(range(args.trials)))},
        # Actors reused across trials: a fresh Python worker per trial would cost about a second
        # each here.
        tune_config=tune.TuneConfig(num_samples=1, reuse_actors=True),
        run_config=tune.RunConfig(storage_path=storage, name="bench", verbose=0),
    )
    started = time.perf_counter()
    results = tuner.fit()
    seconds = time.perf_counter() - started
    errors = results.num_errors
    short = sum(1 for r in results if r.metrics is None or r.metrics.get("epoch") != args.epochs)
    ray.shutdown()
    out = {
        "ray_version": ray.__version__,
        "trials": args.trials,
        "epochs": args.epochs,
        "cpus": args.cpus,
        "cpus_per_trial": args.cpus_per_trial,
        "seconds": seconds,
        "trials_per_s": args.trials / seconds,
        "results_per_s": args.trials * args.epochs / seconds,
        "errors": errors,
        "incomplete": short,
    }
    print(json.dumps(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    if errors or short or len(results) != args.trials:
        raise SystemExit(f"{errors} trials failed and {short} ended short of {args.epochs} results")


if __name__ == "__main__":
    main()
