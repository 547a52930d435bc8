"""CLIP ViT-B/32 (Radford et al., ICML 2021) from a local file, and the CLIP RGB branch of Table 5.

The network and its BPE tokenizer come from open_clip, which implements OpenAI's architecture and ships
the vocabulary; this module reads and checks weights, builds the model, and wraps its visual encoder as a
video classifier. Nothing here downloads: weights come only from the file that is named.

Checkpoint formats (:func:`read_clip_checkpoint` detects them from the file):

=====================  =====================================================================================
``openai-torchscript``  OpenAI's release ``ViT-B-32.pt``: a TorchScript archive. Its state_dict holds the
                        weights under OpenAI's names (most of them float16) plus three integer entries,
                        ``input_resolution``, ``context_length`` and ``vocab_size``. Read with
                        ``torch.jit.load(map_location="cpu")``; only its state_dict is used, and the three
                        integers are checked against the weights. Like any TorchScript archive, load only
                        files you trust.
``state_dict``          A plain state_dict with OpenAI's key names (``visual.conv1.weight``,
                        ``visual.transformer.resblocks.0.attn.in_proj_weight``, ``token_embedding.weight``,
                        ``text_projection``, ``logit_scale``, ...): what OpenAI's ``clip.load(jit=False)``
                        model or open_clip's ``CLIP`` model gives from ``state_dict()`` (the names are equal).
``open_clip``           open_clip's training checkpoint: ``{"epoch", "name", "state_dict", "optimizer"}``,
                        with a ``module.`` prefix on every key when trained under DistributedDataParallel.
=====================  =====================================================================================

Plain files are read with ``torch.load(..., weights_only=True)``. OpenAI's weights were trained with
QuickGELU (``x * sigmoid(1.702 x)``), so ``quick_gelu=True`` is the default for every format; weights that
LAION trained with open_clip's plain ``ViT-B-32`` config (not ``ViT-B-32-quickgelu``) need
``quick_gelu=False``. Both towers have one attention head per 64 channels, as in OpenAI's models.

Entry points: ``load_clip(path)`` -> model with ``encode_image(images)`` (float B x 3 x 224 x 224,
normalised with :data:`CLIP_MEAN` / :data:`CLIP_STD`) and ``encode_text(tokens)``; ``tokenize(texts)`` ->
B x 77 int64 tokens; :class:`ClipVideoClassifier`, the RGB branch for the trainer.
"""
from __future__ import annotations

import dataclasses
import warnings
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from torch import nn

# The per-channel RGB mean and std of CLIP's training images (for inputs in [0, 1]).
CLIP_MEAN: tuple[float, float, float] = tuple(OPENAI_DATASET_MEAN)
CLIP_STD: tuple[float, float, float] = tuple(OPENAI_DATASET_STD)
CONTEXT_LENGTH = 77  # tokens per text, start and end tokens included
HEAD_WIDTH = 64  # channels per attention head in both towers (OpenAI: heads = width // 64)
PROMPT = "a video of a person {}."  # Table 5's prompt; {} is the readable class name

# Entries of OpenAI's TorchScript state_dict that are not weights: name -> the ClipArchitecture field.
OPENAI_META_KEYS = {"input_resolution": "image_size", "context_length": "context_length",
                    "vocab_size": "vocab_size"}


@dataclass(frozen=True)
class ClipArchitecture:
    """The shape of a CLIP ViT: everything a state_dict's shapes determine."""

    embed_dim: int       # joint image-text embedding
    image_size: int
    patch_size: int
    vision_width: int
    vision_layers: int
    text_width: int
    text_layers: int
    context_length: int = CONTEXT_LENGTH
    vocab_size: int = 49408

    def describe(self) -> str:
        """Its name in CLIP_ARCHITECTURES, else its fields."""
        name = next((k for k, v in CLIP_ARCHITECTURES.items() if v == self), None)
        return name or "a CLIP ViT with " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(self).items())


# OpenAI's released ViTs (CLIP paper, Table 20); Table 5 uses ViT-B-32.
CLIP_ARCHITECTURES: dict[str, ClipArchitecture] = {
    "ViT-B-32": ClipArchitecture(512, 224, 32, 768, 12, 512, 12),
    "ViT-B-16": ClipArchitecture(512, 224, 16, 768, 12, 512, 12),
    "ViT-L-14": ClipArchitecture(768, 224, 14, 1024, 24, 768, 12),
    "ViT-L-14-336": ClipArchitecture(768, 336, 14, 1024, 24, 768, 12),
}
DEFAULT_ARCHITECTURE = "ViT-B-32"


def tokenize(texts: str | Sequence[str], context_length: int = CONTEXT_LENGTH) -> torch.Tensor:
    """CLIP's BPE tokens, B x ``context_length`` int64: start token 49406, the text, end token 49407, zeros.

    Text is lower-cased and whitespace-cleaned as in OpenAI's tokenizer; a text that is too long is cut and
    ends with the end token at position ``context_length - 1`` (OpenAI's ``truncate=True``).
    """
    return open_clip.tokenize([texts] if isinstance(texts, str) else list(texts), context_length=context_length)


def build_clip(architecture: ClipArchitecture | str = DEFAULT_ARCHITECTURE, quick_gelu: bool = True) -> CLIP:
    """An open_clip ``CLIP`` of ``architecture`` with fresh random weights (float32, eval mode)."""
    arch = _architecture(architecture)
    vision = CLIPVisionCfg(layers=arch.vision_layers, width=arch.vision_width, head_width=HEAD_WIDTH,
                           patch_size=arch.patch_size, image_size=arch.image_size)
    text = CLIPTextCfg(context_length=arch.context_length, vocab_size=arch.vocab_size, width=arch.text_width,
                       heads=arch.text_width // HEAD_WIDTH, layers=arch.text_layers)
    return CLIP(arch.embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=quick_gelu).eval()


def _architecture(architecture: ClipArchitecture | str) -> ClipArchitecture:
    if isinstance(architecture, ClipArchitecture):
        return architecture
    if architecture not in CLIP_ARCHITECTURES:
        raise ValueError(f"unknown CLIP architecture {architecture!r}; known: {', '.join(CLIP_ARCHITECTURES)}")
    return CLIP_ARCHITECTURES[architecture]


# --------------------------------------------------------------------------------------------------------
# Reading checkpoints

def _is_torchscript(path: Path) -> bool:
    """TorchScript archives are zip files with a ``code/`` folder and ``constants.pkl``; torch.save's
    zip files have neither."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("/constants.pkl") or "/code/" in n for n in z.namelist())


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0][:200]}" if text else type(e).__name__


def read_clip_checkpoint(path) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict with OpenAI's key names, format) from a CLIP file in one of the formats of the module
    docstring; ``module.`` prefixes and the open_clip wrapper are removed, the TorchScript integers kept."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CLIP checkpoint {path}: no such file")
    if _is_torchscript(path):
        fmt = "openai-torchscript"
        try:
            with warnings.catch_warnings():  # TorchScript is deprecated, but it is the format OpenAI released
                warnings.simplefilter("ignore", FutureWarning)
                obj = torch.jit.load(str(path), map_location="cpu").state_dict()
        except Exception as e:
            raise ValueError(f"CLIP checkpoint {path}: a TorchScript archive that torch.jit.load cannot read "
                             f"({_first_line(e)})") from e
    else:
        fmt = "state_dict"
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # truncated zip, not a torch file, pickled code, ...
            raise ValueError(f"CLIP checkpoint {path}: torch.load(weights_only=True) cannot read it (truncated, "
                             f"or not a checkpoint of tensors): {_first_line(e)}") from e
        if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
            fmt, obj = "open_clip", obj["state_dict"]
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"CLIP checkpoint {path}: expected a state_dict (names -> tensors), or one under "
                         f"'state_dict', got {type(obj).__name__}")
    state_dict = dict(obj)
    if all(k.startswith("module.") for k in state_dict):  # saved from DistributedDataParallel
        state_dict = {k[len("module."):]: v for k, v in state_dict.items()}
    return state_dict, fmt


def _count_blocks(state_dict, prefix: str) -> int:
    return len({k[len(prefix):].split(".")[0] for k in state_dict if k.startswith(prefix)})


def architecture_of(state_dict: Mapping[str, torch.Tensor], source: str = "<state_dict>") -> ClipArchitecture:
    """The ClipArchitecture that a state_dict with OpenAI's key names has (as OpenAI's ``build_model``
    reads it off the shapes); ValueError naming ``source`` when it is not a CLIP ViT."""
    needed = ("visual.conv1.weight", "visual.positional_embedding", "visual.proj", "token_embedding.weight",
              "positional_embedding", "text_projection")
    missing = [k for k in needed if k not in state_dict]
    if missing:
        keys = list(state_dict)
        if "visual.layer1.0.conv1.weight" in state_dict:
            what = "a ResNet CLIP (RN50 family), not a ViT"
        elif any(k.startswith("Conv3d_1a_7x7.") for k in keys):
            what = "an Inception-I3D checkpoint"
        else:
            what = f"its first keys are {keys[:4]}"
        raise ValueError(f"CLIP checkpoint {source}: not a CLIP ViT state_dict with OpenAI's key names "
                         f"(no {', '.join(missing[:3])}): {what}")
    conv = state_dict["visual.conv1.weight"]
    if conv.ndim != 4 or conv.shape[1] != 3:
        raise ValueError(f"CLIP checkpoint {source}: visual.conv1.weight has shape {tuple(conv.shape)}, "
                         f"expected width x 3 x patch x patch")
    grid = round((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    return ClipArchitecture(
        embed_dim=int(state_dict["text_projection"].shape[-1]), image_size=int(conv.shape[-1]) * grid,
        patch_size=int(conv.shape[-1]), vision_width=int(conv.shape[0]),
        vision_layers=_count_blocks(state_dict, "visual.transformer.resblocks."),
        text_width=int(state_dict["token_embedding.weight"].shape[-1]),
        text_layers=_count_blocks(state_dict, "transformer.resblocks."),
        context_length=int(state_dict["positional_embedding"].shape[0]),
        vocab_size=int(state_dict["token_embedding.weight"].shape[0]))


def _differences(found: ClipArchitecture, expected: ClipArchitecture) -> str:
    return ", ".join(f"{k} {getattr(found, k)} (expected {getattr(expected, k)})"
                     for k in dataclasses.asdict(expected) if getattr(found, k) != getattr(expected, k))


def load_clip(path, architecture: ClipArchitecture | str | None = DEFAULT_ARCHITECTURE,
              quick_gelu: bool = True) -> CLIP:
    """CLIP from a local file (any format of the module docstring), float32, eval mode, on the CPU.

    ``architecture`` is what the file must hold (a name of :data:`CLIP_ARCHITECTURES` or a
    ClipArchitecture; None: whatever CLIP ViT the file holds). Every key and shape is checked: a wrong or
    damaged file stops with a ValueError that names it and says what is wrong. Never downloads anything.
    """
    state_dict, fmt = read_clip_checkpoint(path)
    source = f"{path} ({fmt})"
    found = architecture_of(state_dict, source)
    expected = found if architecture is None else _architecture(architecture)
    if found != expected:
        raise ValueError(f"CLIP checkpoint {source}: holds {found.describe()}, expected {expected.describe()}: "
                         f"{_differences(found, expected)}")
    for key, field in OPENAI_META_KEYS.items():
        if key in state_dict:
            value = state_dict.pop(key)
            if value.numel() != 1 or int(value) != getattr(expected, field):
                raise ValueError(f"CLIP checkpoint {source}: its entry {key} = {value.tolist()} contradicts its "
                                 f"weights ({field} {getattr(expected, field)})")
    model = build_clip(expected, quick_gelu=quick_gelu)
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}" for k, v in state_dict.items()
             if k in own and v.shape != own[k].shape]
    not_float = [k for k, v in state_dict.items() if k in own and not torch.is_floating_point(v)]
    problems = [f"{len(keys)} {what} {keys[:4]}" for what, keys in (
        ("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong),
        ("non-float weights", not_float)) if keys]
    if problems:
        raise ValueError(f"CLIP checkpoint {source}: does not fit {expected.describe()}: {'; '.join(problems)}")
    model.load_state_dict(state_dict)  # OpenAI's float16 weights are cast to the model's float32 here
    return model


# --------------------------------------------------------------------------------------------------------
# The RGB branch of Table 5

def to_clip_input(frames: torch.Tensor, image_size: int | tuple[int, int]) -> torch.Tensor:
    """N x 3 x H x W RGB in [-1, 1] (the trainer's ``x / 255 * 2 - 1``) -> CLIP's input: values in [0, 1]
    normalised with CLIP_MEAN / CLIP_STD, resized (bilinear, antialiased) to ``image_size`` if needed."""
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    x = (frames + 1) / 2
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    mean = x.new_tensor(CLIP_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


class ClipVideoClassifier(nn.Module):
    """CLIP RGB branch (Table 5): CLIP's visual encoder on every frame, frame features mean-pooled over time,
    classified by cosine similarity with the text embeddings of ``prompt.format(name)`` per class, times
    CLIP's temperature ``exp(logit_scale)``.

    The text encoder is frozen: the class embeddings (L2-normalised, C x D) and CLIP's ``logit_scale`` are
    computed once here and kept as buffers (saved in ``state_dict``); only the visual encoder is a parameter
    of this module. ``clip_model.visual`` is shared, not copied: training this module trains it.

    Input: clips B x 3 x T x H x W in [-1, 1], as the trainer feeds the I3D stream; converted to CLIP's
    normalisation inside, and resized to CLIP's input size when H x W differ from it. Outputs (D = CLIP's
    embedding width, ``feature_dim``; C = number of classes):

    * ``forward(clips)`` -> video logits B x C (pooled feature vs text); ``forward(clips, True)`` ->
      (video logits B x C, frame logits B x C x T) for the local (per-frame) loss.
    * ``forward_with_features(clips)`` -> (frame logits B x C x T, features B x D x T): the same call and
      shapes as ``InceptionI3d.forward_with_features`` (T' = T here), for code written for the I3D stream.
      Note that the time mean of the frame logits is not the video logits; ``video_logits(features)`` gives
      those from the same features without a second pass.
    """

    def __init__(self, clip_model: CLIP, class_names: Sequence[str], prompt: str = PROMPT):
        super().__init__()
        names = [class_names] if isinstance(class_names, str) else list(class_names)
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"ClipVideoClassifier: class_names must be a non-empty list of names, got {class_names!r}")
        if prompt.count("{}") != 1:
            raise ValueError(f"ClipVideoClassifier: prompt must hold one '{{}}' for the class name, got {prompt!r}")
        self.class_names, self.prompt = names, prompt
        self.prompts = [prompt.format(n) for n in names]
        self.visual = clip_model.visual
        self.image_size = clip_model.visual.image_size
        device = clip_model.token_embedding.weight.device
        with torch.no_grad():
            text = clip_model.encode_text(tokenize(self.prompts).to(device), normalize=True)
        self.register_buffer("text_embeddings", text.float())
        self.register_buffer("logit_scale", clip_model.logit_scale.detach().float().clone())
        self.num_classes, self.feature_dim = text.shape

    def extract_features(self, clips: torch.Tensor) -> torch.Tensor:
        """B x 3 x T x H x W in [-1, 1] -> per-frame CLIP image embeddings B x D x T (not normalised)."""
        if clips.ndim != 5 or clips.shape[1] != 3:
            raise ValueError(f"ClipVideoClassifier expects RGB clips B x 3 x T x H x W, got shape {tuple(clips.shape)}")
        b, c, t, h, w = clips.shape
        frames = clips.transpose(1, 2).reshape(b * t, c, h, w)
        features = self.visual(to_clip_input(frames, self.image_size))
        return features.reshape(b, t, -1).transpose(1, 2)

    def video_logits(self, features: torch.Tensor) -> torch.Tensor:
        """B x D x T frame features -> B x C: cosine of the time-mean feature with each class embedding."""
        with torch.autocast(features.device.type, enabled=False):  # float32: bf16 is coarse at scale 100
            pooled = F.normalize(features.float().mean(dim=-1), dim=-1)
            return self.logit_scale.exp() * pooled @ self.text_embeddings.T

    def frame_logits(self, features: torch.Tensor) -> torch.Tensor:
        """B x D x T frame features -> B x C x T: cosine of each frame's feature with each class embedding."""
        with torch.autocast(features.device.type, enabled=False):
            frames = F.normalize(features.float(), dim=1)
            return self.logit_scale.exp() * torch.einsum("bdt,cd->bct", frames, self.text_embeddings)

    def forward_with_features(self, clips: torch.Tensor):
        features = self.extract_features(clips)
        return self.frame_logits(features), features

    def forward(self, clips: torch.Tensor, return_frame_logits: bool = False):
        features = self.extract_features(clips)
        video = self.video_logits(features)
        return (video, self.frame_logits(features)) if return_frame_logits else video
