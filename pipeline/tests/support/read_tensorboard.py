"""Reads TensorBoard event directories with TensorBoard's own reader and prints, as JSON, every
scalar (tag -> [[step, value], ...]) and the HParams plugin's records of each directory.

    python read_tensorboard.py DIR...
"""
import json
import sys

from google.protobuf import json_format
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

out = {}
for directory in sys.argv[1:]:
    # 0: keep every event (the default samples scalars down to 10 000 per tag).
    acc = event_accumulator.EventAccumulator(
        directory, size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    acc.Reload()
    scalars = {
        tag: [[e.step, e.value] for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]
    }
    hparams = {
        tag: json_format.MessageToDict(plugin_data_pb2.HParamsPluginData.FromString(content))
        for tag, content in acc.PluginTagToContent("hparams").items()
    }
    out[directory] = {"scalars": scalars, "hparams": hparams}
json.dump(out, sys.stdout)
