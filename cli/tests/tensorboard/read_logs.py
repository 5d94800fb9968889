"""Reads a TensorBoard log folder with TensorBoard's own reader and prints what it holds as one
JSON object: every run's scalars (tag -> [[step, value], ...]) and the hparams plugin's data
(the experiment's hyper-parameters and metrics, each session's hyper-parameters, group and end
status), as TensorBoard's HPARAMS view would read them.

Usage: PYTHONPATH=.deps/tb python3 read_logs.py LOGDIR
"""
import json
import sys

from tensorboard.backend.event_processing import event_multiplexer
from tensorboard.plugins.hparams import metadata as hp_metadata
from google.protobuf import json_format


def main(logdir):
    mux = event_multiplexer.EventMultiplexer(size_guidance={"scalars": 0, "tensors": 0})
    mux.AddRunsFromDirectory(logdir)
    mux.Reload()
    runs = {}
    for run, tags in mux.Runs().items():
        acc = mux.GetAccumulator(run)
        scalars = {}
        # Scalars written as `simple_value` arrive as scalar summaries (and, in newer
        # TensorBoard, as tensors of the scalars plugin): read both ways.
        for tag in tags.get("scalars", []):
            scalars[tag] = [[e.step, e.value] for e in acc.Scalars(tag)]
        for tag in tags.get("tensors", []):
            if tag.startswith("_hparams_/") or tag in scalars:
                continue
            import numpy as np
            from tensorboard.util import tensor_util
            scalars[tag] = [[e.step, float(np.asarray(tensor_util.make_ndarray(e.tensor_proto)).item())]
                            for e in acc.Tensors(tag)]
        runs[run] = {"scalars": scalars}
    hparams = {"experiment": None, "sessions": {}}
    content = mux.PluginRunToTagToContent(hp_metadata.PLUGIN_NAME)
    for run, tag_content in content.items():
        for tag, raw in tag_content.items():
            if tag == hp_metadata.EXPERIMENT_TAG:
                exp = hp_metadata.parse_experiment_plugin_data(raw)
                hparams["experiment"] = {"run": run, **json_format.MessageToDict(exp)}
            elif tag == hp_metadata.SESSION_START_INFO_TAG:
                start = hp_metadata.parse_session_start_info_plugin_data(raw)
                s = hparams["sessions"].setdefault(run, {})
                s["group"] = start.group_name
                s["hparams"] = {k: json_format.MessageToDict(v) for k, v in start.hparams.items()}
            elif tag == hp_metadata.SESSION_END_INFO_TAG:
                end = hp_metadata.parse_session_end_info_plugin_data(raw)
                hparams["sessions"].setdefault(run, {})["status"] = end.status
    print(json.dumps({"runs": runs, "hparams": hparams}, sort_keys=True))


if __name__ == "__main__":
    main(sys.argv[1])
