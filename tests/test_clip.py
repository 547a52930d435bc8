"""CLIP ViT-B/32 loading, tokenizer, the CLIP RGB branch (Table 5) and class names for prompts.

The reference for every feature is written here from OpenAI's description of the architecture (CLIP paper
Sec. 2.4 and its released model code's structure), in float64, straight from the state_dict: patch
convolution, class token, positional embedding, ln_pre, pre-LN residual attention blocks with QuickGELU,
ln_post on the class token, ``proj``; text: token and positional embedding, causal mask, the blocks,
ln_final, the feature at the end token (the highest token id), ``text_projection``. Weights are random in
OpenAI's key layout, with OpenAI's float16 for the matrices, at a reduced width and depth; the full
ViT-B/32 is built once for its keys, shapes and parameter count and run once at batch 1.
"""
from __future__ import annotations

import math
import socket
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from data.benchmarks import get_benchmark, prompt_class_names, readable_class_name
from model.clip import (CLIP_MEAN, CLIP_STD, ClipArchitecture, ClipVideoClassifier, load_clip, read_clip_checkpoint,
                        tokenize)
from model.i3d import InceptionI3d

SOT, EOT = 49406, 49407
# embed 64, 32 px images of 8 px patches (4 x 4 grid), two towers of width 128 (2 heads) and depth 2
TINY = ClipArchitecture(embed_dim=64, image_size=32, patch_size=8, vision_width=128, vision_layers=2,
                        text_width=128, text_layers=2)
# OpenAI's release stores these in float16 (its convert_weights); the rest stays float32.
HALF_SUFFIXES = ("in_proj_weight", "in_proj_bias", "out_proj.weight", "out_proj.bias", "c_fc.weight", "c_fc.bias",
                 "c_proj.weight", "c_proj.bias", "conv1.weight", "text_projection", "visual.proj")


# --- OpenAI's state_dict layout and an independent forward ------------------------------------------------

def openai_shapes(embed, image, patch, vision_width, vision_layers, text_width, text_layers, context=77,
                  vocab=49408) -> dict[str, tuple]:
    """Key -> shape of an OpenAI CLIP ViT state_dict, written from the architecture's hyper-parameters."""
    def block(prefix, w):
        return {f"{prefix}ln_1.weight": (w,), f"{prefix}ln_1.bias": (w,),
                f"{prefix}attn.in_proj_weight": (3 * w, w), f"{prefix}attn.in_proj_bias": (3 * w,),
                f"{prefix}attn.out_proj.weight": (w, w), f"{prefix}attn.out_proj.bias": (w,),
                f"{prefix}ln_2.weight": (w,), f"{prefix}ln_2.bias": (w,),
                f"{prefix}mlp.c_fc.weight": (4 * w, w), f"{prefix}mlp.c_fc.bias": (4 * w,),
                f"{prefix}mlp.c_proj.weight": (w, 4 * w), f"{prefix}mlp.c_proj.bias": (w,)}
    vw, tw, grid = vision_width, text_width, image // patch
    shapes = {"visual.class_embedding": (vw,), "visual.positional_embedding": (grid * grid + 1, vw),
              "visual.proj": (vw, embed), "visual.conv1.weight": (vw, 3, patch, patch),
              "visual.ln_pre.weight": (vw,), "visual.ln_pre.bias": (vw,)}
    for i in range(vision_layers):
        shapes.update(block(f"visual.transformer.resblocks.{i}.", vw))
    shapes.update({"visual.ln_post.weight": (vw,), "visual.ln_post.bias": (vw,),
                   "token_embedding.weight": (vocab, tw), "positional_embedding": (context, tw)})
    for i in range(text_layers):
        shapes.update(block(f"transformer.resblocks.{i}.", tw))
    shapes.update({"ln_final.weight": (tw,), "ln_final.bias": (tw,), "text_projection": (tw, embed),
                   "logit_scale": ()})
    return shapes


def tiny_shapes():
    return openai_shapes(64, 32, 8, 128, 2, 128, 2)


def random_openai_state_dict(shapes, seed=0) -> dict[str, torch.Tensor]:
    """Seeded random weights of a sensible scale, float16 where OpenAI's release has float16."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in shapes.items():
        if key == "logit_scale":
            v = torch.tensor(math.log(1 / 0.07))
        elif key.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
            v = 1 + 0.1 * torch.randn(shape, generator=g)
        elif len(shape) == 1 and key != "visual.class_embedding":  # biases
            v = 0.05 * torch.randn(shape, generator=g)
        else:
            fan_in = shape[1] * (shape[2] * shape[3] if len(shape) == 4 else 1) if key.endswith("weight") else shape[0]
            std = 0.5 if "embedding" in key else fan_in ** -0.5
            v = std * torch.randn(shape, generator=g)
        sd[key] = v.half() if key.endswith(HALF_SUFFIXES) else v.float()
    return sd


def _ln(x, sd, p):
    return F.layer_norm(x, x.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-5)


def _block(x, sd, p, mask=None):
    """Pre-LN residual attention block, heads of 64 channels, QuickGELU MLP. x: N x L x W."""
    n, length, w = x.shape
    heads = w // 64
    q, k, v = (_ln(x, sd, p + "ln_1") @ sd[p + "attn.in_proj_weight"].T + sd[p + "attn.in_proj_bias"]).chunk(3, -1)
    q, k, v = (t.reshape(n, length, heads, w // heads).transpose(1, 2) for t in (q, k, v))
    scores = q @ k.transpose(-1, -2) / math.sqrt(w // heads)
    if mask is not None:
        scores = scores + mask
    attended = (scores.softmax(-1) @ v).transpose(1, 2).reshape(n, length, w)
    x = x + attended @ sd[p + "attn.out_proj.weight"].T + sd[p + "attn.out_proj.bias"]
    h = _ln(x, sd, p + "ln_2") @ sd[p + "mlp.c_fc.weight"].T + sd[p + "mlp.c_fc.bias"]
    h = h * torch.sigmoid(1.702 * h)  # QuickGELU
    return x + h @ sd[p + "mlp.c_proj.weight"].T + sd[p + "mlp.c_proj.bias"]


def _layers(sd, prefix):
    return sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})


def reference_encode_image(sd, images, dtype=torch.float64):
    sd = {k: v.to(dtype) for k, v in sd.items() if k.startswith("visual.")}
    conv = sd["visual.conv1.weight"]
    x = F.conv2d(images.to(dtype), conv, stride=conv.shape[-1]).flatten(2).transpose(1, 2)  # N x grid^2 x W
    cls = sd["visual.class_embedding"].expand(len(x), 1, -1)
    x = _ln(torch.cat([cls, x], 1) + sd["visual.positional_embedding"], sd, "visual.ln_pre")
    for i in _layers(sd, "visual.transformer.resblocks."):
        x = _block(x, sd, f"visual.transformer.resblocks.{i}.")
    return _ln(x[:, 0], sd, "visual.ln_post") @ sd["visual.proj"]


def reference_encode_text(sd, tokens, dtype=torch.float64):
    sd = {k: v.to(dtype) for k, v in sd.items() if not k.startswith("visual.")}
    x = sd["token_embedding.weight"][tokens] + sd["positional_embedding"]
    length = x.shape[1]
    mask = torch.full((length, length), float("-inf"), dtype=dtype).triu(1)
    for i in _layers(sd, "transformer.resblocks."):
        x = _block(x, sd, f"transformer.resblocks.{i}.", mask)
    x = _ln(x, sd, "ln_final")
    return x[torch.arange(len(x)), tokens.argmax(-1)] @ sd["text_projection"]


# --- files in each format -------------------------------------------------------------------------------------

class _Holder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def save_openai_torchscript(sd, path, image_size, context_length=77, vocab_size=49408):
    """A TorchScript archive shaped like OpenAI's ViT-B-32.pt: modules named like OpenAI's, its weights,
    and the integer entries input_resolution, context_length, vocab_size in its state_dict."""
    root = _Holder()
    for key, value in sd.items():
        *path_parts, name = key.split(".")
        module = root
        for part in path_parts:
            if part not in module._modules:
                module.add_module(part, _Holder())
            module = module._modules[part]
        module.register_parameter(name, nn.Parameter(value.clone(), requires_grad=False))
    for name, value in (("input_resolution", image_size), ("context_length", context_length),
                        ("vocab_size", vocab_size)):
        root.register_buffer(name, torch.tensor(value))
    with warnings.catch_warnings():  # TorchScript is deprecated; OpenAI's release is TorchScript all the same
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(root), str(path))


def save_open_clip_checkpoint(sd, path):
    """open_clip's training checkpoint: wrapper dict, DDP's module. prefix, fp32 weights."""
    torch.save({"epoch": 3, "name": "vit-b-32-run", "optimizer": {"state": {}, "param_groups": []},
                "state_dict": {f"module.{k}": v.float() for k, v in sd.items()}}, path)


def _expanded(shapes):
    """A full-size state_dict whose tensors share one element each: a small file with real shapes."""
    return {k: torch.zeros(1).expand(s) if s else torch.zeros(()) for k, s in shapes.items()}


@pytest.fixture(scope="module")
def tiny_sd():
    return random_openai_state_dict(tiny_shapes(), seed=0)


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


TEXTS = ["a video of a person ride bike.", "a photo of a cat", "YoYo!"]


def _check_features(model, sd, images):
    with torch.no_grad():
        img = model.encode_image(images)
        txt = model.encode_text(tokenize(TEXTS))
    ref_img, ref_txt = reference_encode_image(sd, images), reference_encode_text(sd, tokenize(TEXTS))
    assert img.shape == (3, 64) and txt.shape == (3, 64)
    assert ref_img.abs().mean() > 0.1 and ref_txt.abs().mean() > 0.1  # features of a sensible scale
    torch.testing.assert_close(img.double(), ref_img, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(txt.double(), ref_txt, atol=1e-4, rtol=1e-4)


# --- constants and tokenizer ----------------------------------------------------------------------------------

def test_normalisation_constants_are_clips():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_tokenize_known_tokens_and_padding():
    tokens = tokenize(["a photo of a cat", "a"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.int64
    assert tokens[0, :7].tolist() == [SOT, 320, 1125, 539, 320, 2368, EOT]  # OpenAI's clip.tokenize
    assert tokens[1, :3].tolist() == [SOT, 320, EOT]
    assert (tokens[0, 7:] == 0).all() and (tokens[1, 3:] == 0).all()
    assert tokenize("A  Photo of a CAT").tolist() == tokens[:1].tolist()  # lower-cased, whitespace cleaned


def test_tokenize_truncates_at_77_with_end_token():
    tokens = tokenize("a " * 100)
    assert tokens.shape == (1, 77)
    assert tokens[0].tolist() == [SOT] + [320] * 75 + [EOT]


# --- both checkpoint formats give the reference features --------------------------------------------------------

def test_openai_state_dict_gives_reference_features(tmp_path, tiny_sd, images):
    path = tmp_path / "openai_state_dict.pt"
    torch.save(tiny_sd, path)
    assert read_clip_checkpoint(path)[1] == "state_dict"
    _check_features(load_clip(path, TINY), tiny_sd, images)


def test_openai_torchscript_archive_gives_reference_features(tmp_path, tiny_sd, images):
    path = tmp_path / "ViT-tiny.pt"
    save_openai_torchscript(tiny_sd, path, image_size=32)
    sd, fmt = read_clip_checkpoint(path)
    assert fmt == "openai-torchscript"
    assert int(sd["input_resolution"]) == 32 and int(sd["vocab_size"]) == 49408
    assert sd["visual.conv1.weight"].dtype == torch.float16
    model = load_clip(path, architecture=None)  # the architecture read off the file
    assert next(model.parameters()).dtype == torch.float32
    _check_features(model, tiny_sd, images)


def test_open_clip_checkpoint_gives_reference_features(tmp_path, tiny_sd, images):
    path = tmp_path / "epoch_3.pt"
    save_open_clip_checkpoint(tiny_sd, path)
    assert read_clip_checkpoint(path)[1] == "open_clip"
    _check_features(load_clip(path, TINY), {k: v.float() for k, v in tiny_sd.items()}, images)


def test_loading_never_opens_a_connection(tmp_path, tiny_sd, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("load_clip tried to open a network connection")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    path = tmp_path / "sd.pt"
    torch.save(tiny_sd, path)
    load_clip(path, TINY)


def test_full_vit_b32_loads_with_openais_keys_shapes_and_features(tmp_path):
    """The 151,277,313 parameters OpenAI's ViT-B/32 reports; one image and one text through both (float32
    reference: a float64 copy of 151M weights is too much memory for a unit test)."""
    shapes = openai_shapes(512, 224, 32, 768, 12, 512, 12)
    path = tmp_path / "ViT-B-32-shapes.pt"
    torch.save({**_expanded(shapes), "input_resolution": torch.tensor(224), "context_length": torch.tensor(77),
                "vocab_size": torch.tensor(49408)}, path)
    model = load_clip(path)  # the default architecture, ViT-B-32
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == shapes
    assert sum(p.numel() for p in model.parameters()) == 151_277_313
    sd = random_openai_state_dict(shapes, seed=5)
    model.load_state_dict(sd)
    image = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    tokens = tokenize("a video of a person playing daf.")
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(image), reference_encode_image(sd, image, torch.float32),
                                   atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(model.encode_text(tokens), reference_encode_text(sd, tokens, torch.float32),
                                   atol=1e-4, rtol=1e-4)


# --- wrong checkpoints ----------------------------------------------------------------------------------------

def test_vit_b16_checkpoint_is_named_and_refused(tmp_path):
    path = tmp_path / "ViT-B-16.pt"
    torch.save(_expanded(openai_shapes(512, 224, 16, 768, 12, 512, 12)), path)
    with pytest.raises(ValueError, match=r"ViT-B-16\.pt.*holds ViT-B-16.*expected ViT-B-32.*patch_size 16 "
                                         r"\(expected 32\)"):
        load_clip(path)


def test_i3d_checkpoint_is_refused(tmp_path):
    path = tmp_path / "rgb_imagenet.pt"
    torch.save(InceptionI3d(num_classes=4, width_mult=0.125).state_dict(), path)
    with pytest.raises(ValueError, match=r"rgb_imagenet\.pt.*not a CLIP ViT.*Inception-I3D"):
        load_clip(path)


def test_truncated_file_is_refused(tmp_path, tiny_sd):
    path = tmp_path / "cut.pt"
    torch.save(tiny_sd, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"cut\.pt.*cannot read it \(truncated"):
        load_clip(path, TINY)


def test_missing_file_and_non_checkpoint_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nothing\.pt: no such file"):
        load_clip(tmp_path / "nothing.pt")
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"notes\.pt.*cannot read"):
        load_clip(text)


@pytest.mark.parametrize("damage, message", [
    ("drop", r"1 missing keys \['visual\.transformer\.resblocks\.1\.ln_2\.bias'\]"),
    ("reshape", r"wrong shapes \['visual\.ln_post\.weight \(64,\) != \(128,\)'\]"),
    ("extra", r"1 unexpected keys \['visual\.head\.weight'\]"),
    ("meta", r"input_resolution = 224 contradicts its weights \(image_size 32\)"),
])
def test_damaged_state_dict_is_refused_with_the_key(tmp_path, tiny_sd, damage, message):
    sd = dict(tiny_sd)
    if damage == "drop":
        del sd["visual.transformer.resblocks.1.ln_2.bias"]
    elif damage == "reshape":
        sd["visual.ln_post.weight"] = torch.ones(64)
    elif damage == "extra":
        sd["visual.head.weight"] = torch.ones(3)
    else:
        sd["input_resolution"] = torch.tensor(224)
    path = tmp_path / f"{damage}.pt"
    torch.save(sd, path)
    with pytest.raises(ValueError, match=rf"{damage}\.pt.*{message}"):
        load_clip(path, TINY)


# --- the CLIP RGB branch ----------------------------------------------------------------------------------------

@pytest.fixture
def tiny_clip(tmp_path, tiny_sd):
    path = tmp_path / "tiny.pt"
    torch.save(tiny_sd, path)
    return load_clip(path, TINY)


def test_classifier_logits_are_pooled_cosine_with_the_prompts(tiny_clip, tiny_sd):
    names = ["ride bike", "climb stairs", "yo yo"]
    clf = ClipVideoClassifier(tiny_clip, names)
    assert clf.prompts == ["a video of a person ride bike.", "a video of a person climb stairs.",
                           "a video of a person yo yo."]
    clips = torch.rand(2, 3, 4, 32, 32, generator=torch.Generator().manual_seed(3)) * 2 - 1  # trainer's [-1, 1]
    with torch.no_grad():
        video, frames = clf(clips, return_frame_logits=True)
        frame_logits, features = clf.forward_with_features(clips)
    assert video.shape == (2, 3) and frames.shape == (2, 3, 4) and features.shape == (2, 64, 4)
    assert clf.num_classes == 3 and clf.feature_dim == 64

    # reference: CLIP normalisation of x in [0, 1], per-frame image features, time mean, cosine, temperature
    x01 = (clips + 1) / 2
    mean, std = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    per_frame = [(x01[:, :, t] - mean) / std for t in range(4)]
    ref_feats = torch.stack([reference_encode_image(tiny_sd, f) for f in per_frame], dim=-1)  # B x D x T
    text = F.normalize(reference_encode_text(tiny_sd, tokenize(clf.prompts)), dim=-1)
    scale = 1 / 0.07
    ref_video = scale * F.normalize(ref_feats.mean(-1), dim=-1) @ text.T
    ref_frames = scale * torch.einsum("bdt,cd->bct", F.normalize(ref_feats, dim=1), text)
    torch.testing.assert_close(features.double(), ref_feats, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(video.double(), ref_video, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(frames.double(), ref_frames, atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(frame_logits, frames)
    torch.testing.assert_close(clf.video_logits(features), video)


def test_classifier_trains_the_visual_encoder_not_the_text_encoder(tiny_clip):
    clf = ClipVideoClassifier(tiny_clip, ["walk", "run"])
    assert {id(p) for p in clf.parameters()} == {id(p) for p in tiny_clip.visual.parameters()}
    text_before = clf.text_embeddings.clone()
    clips = torch.rand(2, 3, 3, 32, 32, generator=torch.Generator().manual_seed(4)) * 2 - 1
    video, frames = clf(clips, return_frame_logits=True)
    (F.cross_entropy(video, torch.tensor([0, 1])) + frames.mean()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in tiny_clip.visual.parameters())
    text_params = [p for n, p in tiny_clip.named_parameters() if not n.startswith("visual.")]
    assert text_params and all(p.grad is None for p in text_params)
    assert not clf.text_embeddings.requires_grad and torch.equal(clf.text_embeddings, text_before)
    assert {"text_embeddings", "logit_scale"} <= set(clf.state_dict())  # cached in checkpoints


def test_classifier_resizes_other_crops_and_refuses_wrong_shapes(tiny_clip):
    clf = ClipVideoClassifier(tiny_clip, ["walk", "run"])
    with torch.no_grad():
        assert clf(torch.zeros(1, 3, 2, 48, 40)).shape == (1, 2)
    with pytest.raises(ValueError, match=r"B x 3 x T x H x W.*\(1, 2, 2, 32, 32\)"):
        clf(torch.zeros(1, 2, 2, 32, 32))
    with pytest.raises(ValueError, match="one '\\{\\}'"):
        ClipVideoClassifier(tiny_clip, ["walk"], prompt="a video")


def test_classifier_logits_stay_float32_under_bf16_autocast(tiny_clip):
    """The trainer's AMP runs the encoder in bf16; the cosine logits (scale 1/0.07 here, 100 when trained)
    are computed in float32."""
    clf = ClipVideoClassifier(tiny_clip, ["walk", "run"])
    clips = torch.rand(1, 3, 2, 32, 32, generator=torch.Generator().manual_seed(5)) * 2 - 1
    with torch.no_grad():
        full = clf(clips)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            video, frames = clf(clips, return_frame_logits=True)
    assert video.dtype == frames.dtype == torch.float32
    torch.testing.assert_close(video, full, atol=0.1, rtol=0.02)


# --- class names for prompts ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, readable", [
    ("ride_bike", "ride bike"), ("climb_stairs", "climb stairs"), ("ApplyEyeMakeup", "apply eye makeup"),
    ("PlayingDaf", "playing daf"), ("YoYo", "yo yo"), ("riding_a_bike", "riding a bike"), ("hug", "hug"),
])
def test_readable_class_name(name, readable):
    assert readable_class_name(name) == readable


PROMPT_NAMES = {
    "E2H": ["hug", "kick", "talk", "wave", "push", "clap", "kiss", "climb", "smoke", "jump", "drink", "pour",
            "run"],
    "S2U": ["archery", "biking", "brushing teeth", "cutting in kitchen", "horse riding", "mopping floor",
            "playing guitar", "playing violin", "rock climbing indoor", "rowing", "walking with dog",
            "writing on board"],
    "B2U": [
        "apply eye makeup", "apply lipstick", "archery", "baby crawling", "balance beam", "band marching",
        "baseball pitch", "basketball", "basketball dunk", "bench press", "biking", "billiards", "blow dry hair",
        "blowing candles", "body weight squats", "bowling", "boxing punching bag", "boxing speed bag",
        "breast stroke", "brushing teeth", "clean and jerk", "cliff diving", "cricket bowling", "cricket shot",
        "cutting in kitchen", "diving", "drumming", "fencing", "field hockey penalty", "floor gymnastics",
        "frisbee catch", "front crawl", "golf swing", "haircut", "hammering", "hammer throw",
        "handstand pushups", "handstand walking", "head massage", "high jump", "horse race", "horse riding",
        "hula hoop", "ice dancing", "javelin throw", "juggling balls", "jumping jack", "jump rope", "kayaking",
        "knitting", "long jump", "lunges", "military parade", "mixing", "mopping floor", "nunchucks",
        "parallel bars", "pizza tossing", "playing cello", "playing daf", "playing dhol", "playing flute",
        "playing guitar", "playing piano", "playing sitar", "playing tabla", "playing violin", "pole vault",
        "pommel horse", "pull ups", "punch", "push ups", "rafting", "rock climbing indoor", "rope climbing",
        "rowing", "salsa spin", "shaving beard", "shotput", "skate boarding", "skiing", "skijet", "sky diving",
        "soccer juggling", "soccer penalty", "still rings", "sumo wrestling", "surfing", "swing",
        "table tennis shot", "tai chi", "tennis swing", "throw discus", "trampoline jumping", "typing",
        "uneven bars", "volleyball spiking", "walking with dog", "wall pushups", "writing on board", "yo yo"],
}


@pytest.mark.parametrize("benchmark", sorted(PROMPT_NAMES))
def test_prompt_class_names_of_the_real_benchmarks(benchmark):
    assert prompt_class_names(benchmark) == PROMPT_NAMES[benchmark]


def test_prompt_class_names_of_syn_are_plain_words():
    """SYN's classes are plain lower-case words (its list is defined in data/syn.py), used as they are."""
    syn = get_benchmark("SYN")
    names = prompt_class_names(syn)
    assert names == list(syn.classes) and len(set(names)) == len(names)
    assert all(n.isalpha() and n.islower() for n in names)


def test_every_tokenized_prompt_fits_the_context():
    names = [n for b in ("SYN", "E2H", "S2U", "B2U") for n in prompt_class_names(b)]
    tokens = tokenize([f"a video of a person {n}." for n in names])
    assert ((tokens == EOT).sum(1) == 1).all() and (tokens[:, -1] == 0).all()  # none was cut
