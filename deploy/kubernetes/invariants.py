#!/usr/bin/env python3
"""Checks the invariants of rendered convsweep manifests that a schema cannot see.

Usage: invariants.py OVERLAY=RENDERED.yaml ...   (overlays named cpu, gpu, cpu-job)

- the coordinator is one StatefulSet replica on a ReadWriteOnce volume, with the PriorityClass;
- its startup, readiness and liveness probes are native gRPC probes on the ops port, which is
  the port CONVSWEEP_OPS_LISTEN serves;
- the headless Service publishes not-ready addresses;
- every container that reads CONVSWEEP_TOKEN_FILE mounts the token Secret where it points;
- each worker pod's grace period is longer than the worker's checkpoint grace;
- GPU limits (with the toleration and nodeSelector) appear in the gpu overlay only;
- workers run as non-root; the Indexed Job ignores disruptions and exits when idle.
"""

import sys

import yaml


def fail(overlay, msg):
    print(f"{overlay}: {msg}")
    fail.count += 1


fail.count = 0


def env(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


def check(overlay, docs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    sts = by_kind.get("StatefulSet", [])
    if len(sts) != 1:
        return fail(overlay, f"expected one StatefulSet, got {len(sts)}")
    sts = sts[0]
    spec = sts["spec"]
    if spec.get("replicas") != 1:
        fail(overlay, f"the coordinator must have exactly one replica, has {spec.get('replicas')}")
    claims = spec.get("volumeClaimTemplates", [])
    if not claims or claims[0]["spec"]["accessModes"] != ["ReadWriteOnce"]:
        fail(overlay, "the coordinator's state must be a ReadWriteOnce volume claim")
    pod = spec["template"]["spec"]
    if pod.get("priorityClassName") != "convsweep-coordinator":
        fail(overlay, "the coordinator pod lacks its PriorityClass")
    coordinator = pod["containers"][0]
    ops_ports = [p["containerPort"] for p in coordinator["ports"] if p["name"] == "ops"]
    ops_listen = env(coordinator).get("CONVSWEEP_OPS_LISTEN", "")
    if not ops_ports or not ops_listen.endswith(f":{ops_ports[0]}"):
        fail(overlay, f"the ops port ({ops_ports}) is not what CONVSWEEP_OPS_LISTEN ({ops_listen}) serves")
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        p = coordinator.get(probe, {})
        if "grpc" not in p or p["grpc"].get("port") != (ops_ports or [None])[0]:
            fail(overlay, f"{probe} must be a gRPC probe on the ops port {ops_ports}, is {p}")
    headless = [s for s in by_kind.get("Service", []) if s["spec"].get("clusterIP") == "None"]
    if not headless or not headless[0]["spec"].get("publishNotReadyAddresses"):
        fail(overlay, "the headless Service must publish not-ready addresses")

    workers = by_kind.get("Deployment", []) + by_kind.get("Job", [])
    if not workers:
        fail(overlay, "no workers")
    pods = [("coordinator", pod)] + [(w["metadata"]["name"], w["spec"]["template"]["spec"]) for w in workers]
    for name, p in pods:
        if not p.get("securityContext", {}).get("runAsNonRoot"):
            fail(overlay, f"{name} must run as non-root")
        volumes = {v["name"]: v for v in p.get("volumes", [])}
        for c in p["containers"]:
            token = env(c).get("CONVSWEEP_TOKEN_FILE")
            if not token:
                fail(overlay, f"{name}/{c['name']} reads no token file")
                continue
            mounts = [m for m in c.get("volumeMounts", []) if token.startswith(m["mountPath"].rstrip("/") + "/")]
            secret = [volumes.get(m["name"], {}).get("secret", {}).get("secretName") for m in mounts]
            if "convsweep-token" not in secret:
                fail(overlay, f"{name}/{c['name']}: {token} is not on the convsweep-token Secret")
    for w in workers:
        p = w["spec"]["template"]["spec"]
        c = p["containers"][0]
        grace = int(env(c).get("CONVSWEEP_GRACE_SECS") or 30)
        if p.get("terminationGracePeriodSeconds", 30) <= grace:
            fail(overlay, f"{w['metadata']['name']}: pod grace {p.get('terminationGracePeriodSeconds')} s must exceed the worker's {grace} s")
        gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if overlay.startswith("gpu"):
            if gpus is None:
                fail(overlay, "GPU workers must ask for nvidia.com/gpu")
            if not any(t.get("key") == "nvidia.com/gpu" for t in p.get("tolerations", [])):
                fail(overlay, "GPU workers must tolerate the nvidia.com/gpu taint")
            if "nodeSelector" not in p:
                fail(overlay, "GPU workers need a nodeSelector")
        elif gpus is not None:
            fail(overlay, f"{overlay} must not ask for GPUs")
        if w["kind"] == "Job":
            rules = w["spec"].get("podFailurePolicy", {}).get("rules", [])
            if not any(r["action"] == "Ignore" and any(c2["type"] == "DisruptionTarget" for c2 in r.get("onPodConditions", [])) for r in rules):
                fail(overlay, "the Job must ignore DisruptionTarget failures")
            if "--exit-when-idle" not in c.get("args", []):
                fail(overlay, "Job workers must exit when idle")
            if w["spec"].get("completionMode") != "Indexed":
                fail(overlay, "the worker Job must be Indexed")


def main(args):
    for arg in args:
        overlay, path = arg.split("=", 1)
        with open(path, encoding="utf-8") as f:
            docs = [d for d in yaml.safe_load_all(f) if d]
        check(overlay, docs)
        print(f"{overlay}: {len(docs)} objects checked")
    if fail.count:
        sys.exit(1)


if __name__ == "__main__":
    main(sys.argv[1:])
