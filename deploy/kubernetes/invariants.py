#!/usr/bin/env python3
"""Checks the invariants of rendered convsweep manifests that a schema cannot see.

Usage: invariants.py OVERLAY=RENDERED.yaml ...   (overlays named cpu, gpu, cpu-job, postgres, ...)
       invariants.py --self-test OVERLAY=RENDERED.yaml ...   (each broken variant must fail)

- the coordinator is either one StatefulSet replica on a ReadWriteOnce volume (SQLite), or a
  Deployment of at least two replicas on PostgreSQL (the replicated coordinator) with no
  volume claim, required anti-affinity across nodes, a PodDisruptionBudget that keeps one, its
  store URL read from a Secret (never inline), and a PostgreSQL beside it: a CloudNativePG
  Cluster with the fields the operator requires (whose app Secret is the one it reads), or the
  one-replica StatefulSet whose Service it dials, reachable from coordinator pods only; both
  kinds carry the PriorityClass;
- its startup, readiness and liveness probes are native gRPC probes on the ops port, which is
  the port CONVSWEEP_OPS_LISTEN serves;
- the headless Service publishes not-ready addresses;
- every container that reads CONVSWEEP_TOKEN_FILE mounts the token Secret where it points;
- each worker pod's grace period is longer than the worker's checkpoint grace;
- GPU limits (with the toleration and nodeSelector) appear in the gpu overlay only;
- workers run as non-root; the Indexed Job ignores disruptions and exits when idle;
- TLS on the main port in every overlay: the coordinator serves the certificate of the Secret
  convsweep-tls, workers dial https:// and trust its CA, none may send the token over
  plaintext, and exactly one maker of that Secret is rendered (the certs Job or a cert-manager
  Certificate);
- NetworkPolicies: the coordinator's main port takes worker pods only, its ops port the
  monitoring namespace only; workers and the certs Job take no ingress;
- no pod mounts a service-account token but the certs Job's, whose Role touches secrets only;
- every container has a read-only root filesystem and no privilege escalation, and the
  coordinator and workers write their temporary files to an emptyDir;
- every image is pinned by a tag (not latest) or a digest.
"""

import sys

import yaml


def fail(overlay, msg):
    print(f"{overlay}: {msg}")
    fail.count += 1


fail.count = 0


def env(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


TLS_SECRET = "convsweep-tls"


def pod_templates(by_kind):
    """(name, pod spec) of every workload."""
    for kind in ("StatefulSet", "Deployment", "Job"):
        for w in by_kind.get(kind, []):
            yield w["metadata"]["name"], w["spec"]["template"]["spec"]


def mounted_secret(pod, container, path):
    """The Secret `path` lies on in `container`, or None."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for m in container.get("volumeMounts", []):
        if path.startswith(m["mountPath"].rstrip("/") + "/"):
            return volumes.get(m["name"], {}).get("secret", {}).get("secretName")
    return None


def labels_of(pod_selector):
    return pod_selector.get("matchLabels", {})


def check_hardening(overlay, by_kind):
    for name, pod in pod_templates(by_kind):
        automount = pod.get("automountServiceAccountToken")
        if name == "convsweep-certs":
            if pod.get("serviceAccountName") != "convsweep-certs" or automount is not True:
                fail(overlay, "the certs Job needs its own service account and token, for its Role")
        elif automount is not False:
            fail(overlay, f"{name} must not mount a service-account token (automountServiceAccountToken: false)")
        for c in pod.get("initContainers", []) + pod["containers"]:
            ctx = c.get("securityContext", {})
            if ctx.get("readOnlyRootFilesystem") is not True:
                fail(overlay, f"{name}/{c['name']} must have a read-only root filesystem")
            if ctx.get("allowPrivilegeEscalation") is not False:
                fail(overlay, f"{name}/{c['name']} must not allow privilege escalation")
            image = c.get("image", "")
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if "@sha256:" not in image and (not tag or tag == "latest"):
                fail(overlay, f"{name}/{c['name']}: image {image!r} must be pinned by a tag (not latest) or a digest")
        if name != "convsweep-certs":
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            tmp = [m for m in pod["containers"][0].get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            if not tmp or "emptyDir" not in volumes.get(tmp[0]["name"], {}):
                fail(overlay, f"{name} needs an emptyDir at /tmp (its root filesystem is read-only)")
    for role in by_kind.get("Role", []):
        for rule in role.get("rules", []):
            if rule.get("resources") != ["secrets"] or set(rule.get("verbs", [])) - {"create", "get", "patch"}:
                fail(overlay, f"Role {role['metadata']['name']} may only create, get and patch secrets: {rule}")
    if by_kind.get("ClusterRole") or by_kind.get("ClusterRoleBinding"):
        fail(overlay, "no cluster-wide RBAC")


def check_tls(overlay, by_kind, coordinator_pod, coordinator, workers):
    ce = env(coordinator)
    for var in ("CONVSWEEP_TLS_CERT", "CONVSWEEP_TLS_KEY"):
        if mounted_secret(coordinator_pod, coordinator, ce.get(var) or "") != TLS_SECRET:
            fail(overlay, f"the coordinator's {var} must lie on the {TLS_SECRET} Secret")
    for w in workers:
        p = w["spec"]["template"]["spec"]
        c = p["containers"][0]
        we = env(c)
        if not (we.get("CONVSWEEP_COORDINATOR") or "").startswith("https://"):
            fail(overlay, f"{w['metadata']['name']} must dial the coordinator over https://")
        if mounted_secret(p, c, we.get("CONVSWEEP_TLS_CA") or "") != TLS_SECRET:
            fail(overlay, f"{w['metadata']['name']}'s CONVSWEEP_TLS_CA must lie on the {TLS_SECRET} Secret")
        if (we.get("CONVSWEEP_ALLOW_PLAINTEXT_TOKEN") or "false").lower() not in ("false", "0", "no"):
            fail(overlay, f"{w['metadata']['name']} must not send the token over plaintext")
    jobs = [
        j for j in by_kind.get("Job", [])
        if any("--kubernetes-secret" in c.get("args", []) and TLS_SECRET in c.get("args", [])
               for c in j["spec"]["template"]["spec"].get("initContainers", []))
    ]
    certificates = [c for c in by_kind.get("Certificate", []) if c["spec"].get("secretName") == TLS_SECRET]
    if len(jobs) + len(certificates) != 1:
        fail(overlay, f"exactly one maker of {TLS_SECRET} (certs Job or Certificate), got {len(jobs)} and {len(certificates)}")


def check_network(overlay, by_kind):
    policies = by_kind.get("NetworkPolicy", [])
    coordinator = [p for p in policies if labels_of(p["spec"]["podSelector"]).get("app.kubernetes.io/name") == "convsweep-coordinator"]
    if len(coordinator) != 1:
        return fail(overlay, f"one NetworkPolicy must select the coordinator, got {len(coordinator)}")
    spec = coordinator[0]["spec"]
    if "Ingress" not in spec.get("policyTypes", []):
        fail(overlay, "the coordinator's NetworkPolicy must restrict ingress")
    allowed = set()
    for rule in spec.get("ingress", []):
        ports = [p.get("port") for p in rule.get("ports", [])]
        if not ports:
            fail(overlay, f"a coordinator ingress rule opens every port: {rule}")
        for peer in rule.get("from", []) or [{}]:
            if labels_of(peer.get("podSelector", {})) == {"app.kubernetes.io/name": "convsweep-worker"} and "namespaceSelector" not in peer:
                allowed.update(("workers", port) for port in ports)
            elif labels_of(peer.get("namespaceSelector", {})) == {"kubernetes.io/metadata.name": "monitoring"} and "podSelector" not in peer:
                allowed.update(("monitoring", port) for port in ports)
            else:
                fail(overlay, f"the coordinator admits an unexpected peer: {peer}")
    if allowed != {("workers", 50051), ("monitoring", 9090)}:
        fail(overlay, f"the coordinator must admit workers on 50051 and monitoring on 9090 only, admits {sorted(allowed)}")
    closed = set()
    for p in policies:
        sel = p["spec"]["podSelector"]
        if "Ingress" in p["spec"].get("policyTypes", []) and not p["spec"].get("ingress"):
            closed.update(labels_of(sel).values())
            for e in sel.get("matchExpressions", []):
                if e.get("key") == "app.kubernetes.io/name" and e.get("operator") == "In":
                    closed.update(e.get("values", []))
    for name in ("convsweep-worker", "convsweep-certs"):
        if name == "convsweep-certs" and not any(n == "convsweep-certs" for n, _ in pod_templates(by_kind)):
            continue
        if name not in closed:
            fail(overlay, f"{name} pods must take no ingress")


COORDINATOR = {"app.kubernetes.io/name": "convsweep-coordinator"}


def check_replicated(overlay, by_kind, deployment):
    """The replicated coordinator: several stateless replicas on PostgreSQL."""
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    if (spec.get("replicas") or 1) < 2:
        fail(overlay, f"the replicated coordinator needs at least two replicas, has {spec.get('replicas')}")
    for v in pod.get("volumes", []):
        if "persistentVolumeClaim" in v or "hostPath" in v:
            fail(overlay, f"the replicated coordinator must hold no volume that pins it to a node: {v['name']}")
    terms = pod.get("affinity", {}).get("podAntiAffinity", {}).get("requiredDuringSchedulingIgnoredDuringExecution", [])
    if not any(t.get("topologyKey") == "kubernetes.io/hostname" and labels_of(t.get("labelSelector", {})) == COORDINATOR for t in terms):
        fail(overlay, "the replicated coordinator needs required pod anti-affinity across nodes (kubernetes.io/hostname)")
    pdbs = [p for p in by_kind.get("PodDisruptionBudget", []) if labels_of(p["spec"].get("selector", {})) == COORDINATOR]
    if len(pdbs) != 1 or not (isinstance(pdbs[0]["spec"].get("minAvailable"), int) and pdbs[0]["spec"]["minAvailable"] >= 1):
        fail(overlay, "the replicated coordinator needs one PodDisruptionBudget that keeps at least one replica (minAvailable >= 1)")
    c = pod["containers"][0]
    e = env(c)
    if "CONVSWEEP_STORE_URL" in e or any(x["name"] == "CONVSWEEP_STORE_URL" for x in c.get("env", [])):
        fail(overlay, "the store URL (with its password) must come from a Secret file, not an env value")
    if "CONVSWEEP_STATE_DIR" in e:
        fail(overlay, "the replicated coordinator keeps no state folder")
    store_secret = mounted_secret(pod, c, e.get("CONVSWEEP_STORE_URL_FILE") or "")
    if not store_secret:
        fail(overlay, "CONVSWEEP_STORE_URL_FILE must lie on a Secret")
    clusters = by_kind.get("Cluster", [])
    databases = [s for s in by_kind.get("StatefulSet", []) if s["metadata"]["name"] == "convsweep-postgres"]
    if len(clusters) + len(databases) != 1:
        return fail(overlay, f"exactly one PostgreSQL beside the replicated coordinator, got {len(clusters)} Clusters and {len(databases)} StatefulSets")
    for cl in clusters:
        cs = cl["spec"]
        if cl.get("apiVersion") != "postgresql.cnpg.io/v1":
            fail(overlay, f"the Cluster must be postgresql.cnpg.io/v1, is {cl.get('apiVersion')}")
        if not isinstance(cs.get("instances"), int) or cs["instances"] < 1:
            fail(overlay, "the CloudNativePG Cluster needs spec.instances (>= 1)")
        elif cs["instances"] < 2:
            fail(overlay, "a CloudNativePG Cluster of one instance cannot fail over")
        if not cs.get("storage", {}).get("size") and not cs.get("storage", {}).get("pvcTemplate"):
            fail(overlay, "the CloudNativePG Cluster needs spec.storage.size (or a pvcTemplate)")
        initdb = cs.get("bootstrap", {}).get("initdb", {})
        if not initdb.get("database") or not initdb.get("owner"):
            fail(overlay, "the CloudNativePG Cluster's bootstrap.initdb must name the database and its owner")
        if store_secret != f"{cl['metadata']['name']}-app":
            fail(overlay, f"the coordinator must read the store URL from the operator's Secret {cl['metadata']['name']}-app, reads {store_secret}")
    for db in databases:
        claims = db["spec"].get("volumeClaimTemplates", [])
        if db["spec"].get("replicas") != 1 or not claims or claims[0]["spec"]["accessModes"] != ["ReadWriteOnce"]:
            fail(overlay, "the single PostgreSQL is one replica on a ReadWriteOnce volume")
        if not any(s["metadata"]["name"] == db["spec"].get("serviceName") for s in by_kind.get("Service", [])):
            fail(overlay, "the single PostgreSQL needs its Service")
        if store_secret != "convsweep-store":
            fail(overlay, f"the coordinator reads its store URL from convsweep-store, reads {store_secret}")
        guards = [
            p for p in by_kind.get("NetworkPolicy", [])
            if labels_of(p["spec"]["podSelector"]) == {"app.kubernetes.io/name": "convsweep-postgres"}
        ]
        peers = [peer for g in guards for rule in g["spec"].get("ingress", []) for peer in rule.get("from", []) or [{}]]
        if not guards or any(labels_of(peer.get("podSelector", {})) != COORDINATOR or "namespaceSelector" in peer for peer in peers):
            fail(overlay, "only coordinator pods may reach the single PostgreSQL")


def check(overlay, docs):
    by_kind = {}
    for d in docs:
        by_kind.setdefault(d["kind"], []).append(d)
    coordinators = [
        d for kind in ("StatefulSet", "Deployment") for d in by_kind.get(kind, [])
        if d["metadata"]["name"] == "convsweep-coordinator"
    ]
    if len(coordinators) != 1:
        return fail(overlay, f"expected one coordinator workload, got {len(coordinators)}")
    spec = coordinators[0]["spec"]
    if coordinators[0]["kind"] == "StatefulSet":
        if spec.get("replicas") != 1:
            fail(overlay, f"the coordinator must have exactly one replica, has {spec.get('replicas')}")
        claims = spec.get("volumeClaimTemplates", [])
        if not claims or claims[0]["spec"]["accessModes"] != ["ReadWriteOnce"]:
            fail(overlay, "the coordinator's state must be a ReadWriteOnce volume claim")
    else:
        check_replicated(overlay, by_kind, coordinators[0])
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

    workers = [
        w for w in by_kind.get("Deployment", []) + by_kind.get("Job", [])
        if w["metadata"]["name"].startswith("convsweep-worker")
    ]
    if not workers:
        fail(overlay, "no workers")
    check_hardening(overlay, by_kind)
    check_tls(overlay, by_kind, pod, coordinator, workers)
    check_network(overlay, by_kind)
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


def workload(docs, name):
    return next(d for d in docs if d["kind"] in ("StatefulSet", "Deployment", "Job") and d["metadata"]["name"] == name)


def set_env(container, name, value):
    container["env"] = [e for e in container.get("env", []) if e["name"] != name] + [{"name": name, "value": value}]


def worker_of(docs):
    return next(d for d in docs if d["kind"] in ("Deployment", "Job") and d["metadata"]["name"].startswith("convsweep-worker"))


# Each breaks one invariant of a rendered overlay; the self-test checks that it is caught.
MUTATIONS = {
    "plaintext main port": lambda docs: set_env(worker_of(docs)["spec"]["template"]["spec"]["containers"][0], "CONVSWEEP_COORDINATOR", "http://convsweep-coordinator-headless:50051"),
    "token over plaintext": lambda docs: set_env(worker_of(docs)["spec"]["template"]["spec"]["containers"][0], "CONVSWEEP_ALLOW_PLAINTEXT_TOKEN", "true"),
    "no TLS key": lambda docs: set_env(workload(docs, "convsweep-coordinator")["spec"]["template"]["spec"]["containers"][0], "CONVSWEEP_TLS_KEY", "/etc/key"),
    "no certificate maker": lambda docs: docs.__setitem__(slice(None), [d for d in docs if d["kind"] not in ("Job", "Certificate") or d["metadata"]["name"] not in ("convsweep-certs", "convsweep-coordinator")]),
    "no NetworkPolicy": lambda docs: docs.__setitem__(slice(None), [d for d in docs if d["kind"] != "NetworkPolicy"]),
    "main port open to all": lambda docs: next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "convsweep-coordinator")["spec"]["ingress"][0].__setitem__("from", [{"namespaceSelector": {}}]),
    "worker ingress": lambda docs: docs.__setitem__(slice(None), [d for d in docs if d["kind"] != "NetworkPolicy" or d["metadata"]["name"] != "convsweep-no-ingress"]),
    "service-account token": lambda docs: worker_of(docs)["spec"]["template"]["spec"].__setitem__("automountServiceAccountToken", True),
    "writable root": lambda docs: worker_of(docs)["spec"]["template"]["spec"]["containers"][0]["securityContext"].__setitem__("readOnlyRootFilesystem", False),
    "no /tmp": lambda docs: workload(docs, "convsweep-coordinator")["spec"]["template"]["spec"]["containers"][0].__setitem__("volumeMounts", [m for m in workload(docs, "convsweep-coordinator")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] != "/tmp"]),
    "latest image": lambda docs: worker_of(docs)["spec"]["template"]["spec"]["containers"][0].__setitem__("image", "convsweep-worker:latest"),
    "untagged image": lambda docs: workload(docs, "convsweep-coordinator")["spec"]["template"]["spec"]["containers"][0].__setitem__("image", "registry.example:5000/convsweep-coordinator"),
}


def coordinator_pod(docs):
    return workload(docs, "convsweep-coordinator")["spec"]["template"]["spec"]


def add_claim(docs):
    coordinator_pod(docs)["volumes"].append({"name": "state", "persistentVolumeClaim": {"claimName": "state"}})


# Each breaks one invariant of the replicated coordinator (overlays that have it).
REPLICATED_MUTATIONS = {
    "one replica": lambda docs: workload(docs, "convsweep-coordinator")["spec"].__setitem__("replicas", 1),
    "a volume claim": add_claim,
    "no anti-affinity": lambda docs: coordinator_pod(docs).pop("affinity"),
    "no coordinator PDB": lambda docs: docs.__setitem__(slice(None), [d for d in docs if d["kind"] != "PodDisruptionBudget" or d["metadata"]["name"] != "convsweep-coordinator"]),
    "store URL inline": lambda docs: set_env(coordinator_pod(docs)["containers"][0], "CONVSWEEP_STORE_URL", "postgres://u:pw@db/x"),
    "no database": lambda docs: docs.__setitem__(slice(None), [d for d in docs if d["kind"] != "Cluster" and d["metadata"]["name"] != "convsweep-postgres"]),
    "database open to all": lambda docs: [d["spec"].__setitem__("instances", 1) if d["kind"] == "Cluster" else None for d in docs]
    if any(d["kind"] == "Cluster" for d in docs)
    else next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"] == "convsweep-postgres")["spec"]["ingress"][0].__setitem__("from", [{"namespaceSelector": {}}]),
}


def self_test(overlay, docs):
    """Every mutation of a rendered overlay that passes must fail the checks."""
    import copy
    import contextlib
    import io

    missed = []
    mutations = dict(MUTATIONS)
    if any(d["kind"] == "Deployment" and d["metadata"]["name"] == "convsweep-coordinator" for d in docs):
        mutations.update(REPLICATED_MUTATIONS)
    for what, mutate in mutations.items():
        broken = copy.deepcopy(docs)
        mutate(broken)
        before = fail.count
        with contextlib.redirect_stdout(io.StringIO()):
            check(overlay, broken)
        if fail.count == before:
            missed.append(what)
        fail.count = before
    for what in missed:
        fail(overlay, f"self-test: the checks miss a manifest with {what}")
    print(f"{overlay}: each of {len(mutations)} broken variants is caught" if not missed else f"{overlay}: self-test failed")


def main(args):
    if args and args[0] == "--self-test":
        for arg in args[1:]:
            overlay, path = arg.split("=", 1)
            with open(path, encoding="utf-8") as f:
                self_test(overlay, [d for d in yaml.safe_load_all(f) if d])
        sys.exit(1 if fail.count else 0)
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
