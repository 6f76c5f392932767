"""Where a model's files are: a local Hugging Face folder, or the hub download of a known name."""

from __future__ import annotations

import os

from gpt_jax.pretrained.hf_config import CONFIG_FILE
from gpt_jax.pretrained.errors import PretrainedError
from gpt_jax.pretrained.tokenizer_files import TOKENIZER_FILES
from gpt_jax.pretrained.weight_files import find_weight_files

HUB_MODELS = {  # init_from name -> hub repository
    "gpt2": "openai-community/gpt2",  # 124M
    "gpt2-medium": "openai-community/gpt2-medium",  # 350M
    "gpt2-large": "openai-community/gpt2-large",  # 774M
    "gpt2-xl": "openai-community/gpt2-xl",  # 1558M
    "openai-gpt": "openai-community/openai-gpt",  # GPT-1, 117M
}
SAFETENSORS_PATTERNS = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
TORCH_PICKLE_PATTERNS = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]


def resolve(name_or_path: str) -> str:
    """A local folder holding the model: `name_or_path` itself, or the hub download of a known name."""
    if not name_or_path:
        raise PretrainedError("no model given: pass a name (" + ", ".join(HUB_MODELS) + ") or a local folder")
    path = os.path.abspath(os.path.expanduser(name_or_path))
    if os.path.isdir(path) and (name_or_path not in HUB_MODELS or os.path.isfile(os.path.join(path, CONFIG_FILE))):
        return path  # a folder named like a hub model (e.g. ./gpt2) wins only when it holds a model
    if os.path.exists(path):
        raise PretrainedError(f"{name_or_path} is a file; pass the folder that holds config.json and the weights")
    repo = HUB_MODELS.get(name_or_path) or (name_or_path if name_or_path in HUB_MODELS.values() else None)
    if repo is None:
        raise PretrainedError(f"{name_or_path!r} is neither a known model ({', '.join(HUB_MODELS)}) nor an existing "
                              "folder; pass a local folder with config.json and model.safetensors")
    return download(repo)


def download(repo: str) -> str:
    """Snapshot of the files we need from hub repository `repo` (huggingface_hub's cache; nothing else)."""
    try:  # here, not at the top: huggingface_hub is optional, and only a hub name needs it
        from huggingface_hub import snapshot_download
    except ImportError:
        raise PretrainedError(f"downloading {repo} needs huggingface_hub (pip install huggingface_hub); or pass a "
                              "local folder with config.json and model.safetensors") from None
    tokenizer = list(TOKENIZER_FILES) if "openai-gpt" in repo else []  # GPT-2's is built offline (tiktoken)
    try:
        folder = snapshot_download(repo, allow_patterns=[CONFIG_FILE] + SAFETENSORS_PATTERNS + tokenizer)
        if not find_weight_files(folder, quiet=True):  # no safetensors in the repository: its torch pickles
            folder = snapshot_download(repo, allow_patterns=TORCH_PICKLE_PATTERNS)
    except Exception as e:  # offline, no network, unknown repository, interrupted download, ...
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled  # optional, as above

        if isinstance(e, (LocalEntryNotFoundError, OfflineModeIsEnabled)):
            why = "offline or unreachable, and not in the local cache"
        else:
            why = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        raise PretrainedError(
            f"cannot download {repo} from the Hugging Face hub ({why}); pass a local folder instead, "
            f"init_from=/path/to/folder holding config.json and model.safetensors (e.g. fetched elsewhere with "
            f"`hf download {repo} --local-dir FOLDER`)") from None
    return folder
