"""One preparer per dataset layout; each returns a `Prepared` list of clips for `finalize`."""

from src.data.prepare import audioset, esc50, iemocap, librispeech, speechcommands, urbansound8k, voxceleb1

PREPARERS = {
    "audioset": audioset.prepare,
    "librispeech": librispeech.prepare,
    "speechcommands": speechcommands.prepare,
    "esc50": esc50.prepare,
    "voxceleb1": voxceleb1.prepare,
    "iemocap": iemocap.prepare,
    "urbansound8k": urbansound8k.prepare,
}
