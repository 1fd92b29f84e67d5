"""CLIP score with a CLIP model the user has locally (``--clip DIR``, a transformers CLIPModel directory with
its tokenizer): the cosine similarity of each image's and its prompt's embeddings, mean and 95% interval.
Nothing is downloaded; a directory that is missing or holds no CLIP model is one clear error."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from edgekit.errors import InputError

NAME = "clip"
# OpenAI CLIP's preprocessing constants, used when the directory has no preprocessor_config.json.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def check_clip_dir(path: Path | str, param: str = "clip") -> Path:
    """The resolved directory, or one InputError naming what is wrong (before any model is loaded)."""
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise InputError("no such directory (expected a local transformers CLIP model directory)",
                         param=param, value=path)
    config = path / "config.json"
    if not config.is_file():
        raise InputError("not a CLIP model directory (config.json missing)", param=param, value=path)
    from edgekit.safe_read import read_json

    data = read_json(config, "CLIP config.json", param=param)
    model_type = data.get("model_type") if isinstance(data, dict) else None
    if model_type != "clip":
        raise InputError(f"config.json says model_type {model_type!r}, expected 'clip' (a transformers CLIPModel "
                         "with text and vision towers)", param=param, value=path)
    if not any((path / f).is_file() for f in ("model.safetensors", "pytorch_model.bin")):
        raise InputError("no weights (model.safetensors or pytorch_model.bin)", param=param, value=path)
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.json")):
        raise InputError("no tokenizer (tokenizer.json or vocab.json + merges.txt)", param=param, value=path)
    return path


class ClipScorer:
    name = NAME

    def __init__(self, directory: Path | str, param: str = "clip") -> None:
        import torch
        from transformers import CLIPModel, CLIPTokenizer
        from transformers.utils import logging as transformers_logging

        self.directory = check_clip_dir(directory, param)
        transformers_logging.disable_progress_bar()
        try:
            self.model = CLIPModel.from_pretrained(self.directory, local_files_only=True, dtype=torch.float32).eval()
            self.tokenizer = CLIPTokenizer.from_pretrained(self.directory, local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise InputError(f"transformers could not load it as CLIP ({first})",
                             param=param, value=self.directory) from None
        mean, std = CLIP_MEAN, CLIP_STD
        pre = self.directory / "preprocessor_config.json"
        if pre.is_file():
            from edgekit.safe_read import read_json

            data = read_json(pre, "CLIP preprocessor_config.json", param=param)
            data = data if isinstance(data, dict) else {}
            mean, std = tuple(data.get("image_mean", mean)), tuple(data.get("image_std", std))
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.size = int(self.model.config.vision_config.image_size)
        self.description = f"CLIP score ({self.directory.name}): cosine of image and prompt embeddings"

    def per_image(self, images: np.ndarray, prompts: list[str]) -> np.ndarray:
        """Cosine similarity of image i (N, H, W, 3 in [0, 1]) with prompts[i]."""
        import torch

        x = torch.from_numpy(np.asarray(images, np.float32))
        if x.ndim == 3:
            x = x.unsqueeze(-1)
        x = x.permute(0, 3, 1, 2)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = torch.nn.functional.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False)
        x = (x.clamp(0, 1) - self.mean) / self.std
        max_length = int(self.model.config.text_config.max_position_embeddings)
        tokens = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=max_length,
                                return_tensors="pt")
        with torch.inference_mode():
            image_emb = self.model.get_image_features(pixel_values=x)
            text_emb = self.model.get_text_features(input_ids=tokens["input_ids"],
                                                    attention_mask=tokens["attention_mask"])
        image_emb = getattr(image_emb, "pooler_output", image_emb)
        text_emb = getattr(text_emb, "pooler_output", text_emb)
        cos = torch.nn.functional.cosine_similarity(image_emb, text_emb, dim=-1)
        return cos.numpy().astype(np.float64)

    def score(self, images: np.ndarray, prompts: list[str]) -> dict:
        from edgekit.quality.metrics import summary

        return summary(self.per_image(images, prompts), low=-1.0, high=1.0)
