"""Benchmarks: class lists in label order, which dataset feeds each domain, the paper's results.

The training presets live in one place, ``model.trainer.PRESETS`` (docs/presets.md).

A :class:`Benchmark` is data, not code: its class list, the class map that picks each class out of the
source (image) dataset and the target (video) dataset, the protocol, and where all of it comes from.
``E2H``, ``S2U`` and ``B2U`` are defined here; ``SYN`` (the procedurally generated benchmark) is added by
``data/syn.py`` through :func:`register_benchmark`; :func:`get_benchmark` imports that module (and calls
its ``register()``) on the first request for a name it does not know, so nothing here depends on it.

The source of each class list is cited in each benchmark's ``source_note``:

- E2H: exact. ST-I2V (junbaoZHUO/ST-I2V @44d0f8f) ``sourcelistname_My_E.txt`` / ``targetlistname_My_H.txt``,
  13 classes in the order hug=0 ... run=12. The official CFB code numbers them alphabetically instead
  (clap=0, ...): :data:`E2H_CFB_CLASS_ORDER` and :func:`with_class_order` give that variant.
- S2U: UNVERIFIED. No public list exists; the 12 classes here are a candidate (every Stanford40 action
  with an obvious UCF101 counterpart) consistent with the CFB code's ``brushing_teeth_008.jpg 2``.
- B2U: the 101 UCF101 classes in ``classInd.txt`` order, 0-based (CycDA's ``UCF_mapping.txt``).
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import re
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from data.datasets import (EAD_CLASSES, STANFORD40_CLASSES, UCF101_CLASSES, Skipped, list_dataset,
                           normalize_class_map)
from data.items import Item


@dataclass(frozen=True)
class Benchmark:
    """One image-to-video adaptation benchmark.

    ``classes`` is the label order; ``source_class_map`` / ``target_class_map`` map each benchmark class
    (all of them, in label order) to its class name(s) in the source / target dataset (a key of
    :data:`data.datasets.ADAPTERS`); left out, each class maps to the folder of the same name.
    ``target_split`` is the unlabeled target training set and ``eval_split`` the set accuracy is measured
    on (equal for a transductive protocol). ``verified`` is False where the class list is a
    reconstruction, not taken from a released file. ``source_subdir`` / ``target_subdir`` name the folder
    below the configured root that holds a domain (SYN keeps both domains under one root);
    ``source_depth_subdir`` a folder of ground-truth depth maps laid out like the source images, if any.
    """

    name: str
    classes: list[str]
    source_dataset: str = "folder"
    source_class_map: dict[str, list[str]] | None = None
    target_dataset: str = "folder"
    target_class_map: dict[str, list[str]] | None = None
    target_protocol: str = ""
    verified: bool = True
    source_note: str = ""
    source_split: str = "all"
    target_split: str = "all"
    eval_split: str = "all"
    note: str = ""
    paper_accuracy: float | None = None  # Table 1 of the paper, mean over 3 runs, %
    expected_source_counts: dict[str, int] | None = None  # per class, where the source lists are public
    expected_target_counts: dict[str, int] | None = None
    source_subdir: str = ""
    target_subdir: str = ""
    source_depth_subdir: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.classes, str) or not self.classes:
            raise ValueError(f"{self.name}: classes must be a non-empty list of class names")
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"{self.name}: duplicate class names")
        object.__setattr__(self, "classes", list(self.classes))
        for side in ("source_class_map", "target_class_map"):
            given = getattr(self, side)
            cmap = normalize_class_map(given if given is not None else self.classes)  # rejects reused names
            if list(cmap) != self.classes:
                raise ValueError(f"{self.name}: {side} must list every class, in label order")
            object.__setattr__(self, side, {k: list(v) for k, v in cmap.items()})

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def transductive(self) -> bool:
        """True when the unlabeled target training set is also the evaluation set."""
        return self.target_split == self.eval_split

    def label_of(self, class_name: str) -> int:
        return self.classes.index(class_name)


def with_class_order(benchmark: Benchmark, classes: Sequence[str], name: str | None = None) -> Benchmark:
    """The same benchmark with another label order (e.g. the CFB code's alphabetical E2H order)."""
    if sorted(classes) != sorted(benchmark.classes):
        raise ValueError(f"{benchmark.name}: a new order must hold the same classes")
    return dataclasses.replace(
        benchmark, name=name or benchmark.name, classes=list(classes),
        source_class_map={c: benchmark.source_class_map[c] for c in classes},
        target_class_map={c: benchmark.target_class_map[c] for c in classes})


# --- E2H -----------------------------------------------------------------------------------------------

E2H_CLASSES: tuple[str, ...] = EAD_CLASSES  # hug=0 ... run=12 (ST-I2V)
E2H_CFB_CLASS_ORDER: tuple[str, ...] = tuple(sorted(EAD_CLASSES))  # clap=0 ... wave=12 (official CFB code)
# The nine EAD classes whose images are whole Stanford40 classes (same counts); hug, kick, kiss, talk come
# from another image set (INFERRED: HII). Useful to rebuild those classes from a Stanford40 copy.
E2H_EAD_FROM_STANFORD40: dict[str, str] = {
    "wave": "waving_hands", "push": "pushing_a_cart", "clap": "applauding", "climb": "climbing",
    "smoke": "smoking", "jump": "jumping", "drink": "drinking", "pour": "pouring_liquid", "run": "running",
}

E2H = Benchmark(
    name="E2H",
    classes=list(E2H_CLASSES),
    source_dataset="eads",
    source_class_map={c: [c] for c in E2H_CLASSES},
    target_dataset="hmdb51",
    target_class_map={c: [c] for c in E2H_CLASSES},
    target_protocol=("Transductive: ALL 1690 HMDB51 videos of the 13 classes are both the unlabeled target "
                     "training set and the test set (ST-I2V train.py and the CFB code evaluate on the list "
                     "they adapt on). CycDA instead uses the official HMDB51 splits (split='train1'/'test1')."),
    verified=True,
    source_note=("Exact: ST-I2V (junbaoZHUO/ST-I2V @44d0f8f) sourcelistname_My_E.txt / targetlistname_My_H.txt, "
                 "label order hug=0 ... run=12; 3008 EAD images, 1690 HMDB51 videos. The "
                 "official CFB code orders the classes alphabetically (E2H_CFB_CLASS_ORDER)."),
    note="Class folders have the same names in EADs and HMDB51 (HMDB51 'climb' is not 'climb_stairs').",
    paper_accuracy=77.4,
    expected_source_counts={"hug": 209, "kick": 151, "talk": 187, "wave": 210, "push": 235, "clap": 284,
                            "kiss": 194, "climb": 295, "smoke": 241, "jump": 295, "drink": 256, "pour": 200,
                            "run": 251},
    expected_target_counts={"hug": 118, "kick": 130, "talk": 120, "wave": 104, "push": 116, "clap": 130,
                            "kiss": 102, "climb": 108, "smoke": 109, "jump": 151, "drink": 164, "pour": 106,
                            "run": 232},
)

# --- S2U (UNVERIFIED) ----------------------------------------------------------------------------------

# UCF101 class -> Stanford40 action; UCF names in alphabetical order (BrushingTeeth = 2, as in the CFB code).
S2U_CANDIDATE_MAP: dict[str, str] = {
    "Archery": "shooting_an_arrow",
    "Biking": "riding_a_bike",
    "BrushingTeeth": "brushing_teeth",
    "CuttingInKitchen": "cutting_vegetables",
    "HorseRiding": "riding_a_horse",
    "MoppingFloor": "cleaning_the_floor",
    "PlayingGuitar": "playing_guitar",
    "PlayingViolin": "playing_violin",
    "RockClimbingIndoor": "climbing",
    "Rowing": "rowing_a_boat",
    "WalkingWithDog": "walking_the_dog",
    "WritingOnBoard": "writing_on_a_board",
}

S2U = Benchmark(
    name="S2U",
    classes=list(S2U_CANDIDATE_MAP),
    source_dataset="stanford40",
    source_class_map={u: [s] for u, s in S2U_CANDIDATE_MAP.items()},
    target_dataset="ucf101",
    target_class_map={u: [u] for u in S2U_CANDIDATE_MAP},
    target_protocol=("UNKNOWN which UCF101 videos the paper adapts on and evaluates on; by analogy with E2H "
                     "(and the CFB code's single target list) all videos of the 12 classes are used for both. "
                     "Use split='train1'/'test1' for an inductive protocol."),
    verified=False,
    source_note=("UNVERIFIED candidate : no public S2U list file exists (CycDA expects an "
                 "unreleased S2U/action_list.txt). Every Stanford40 action with an obvious UCF101 counterpart "
                 "(exactly 12), UCF names alphabetical; consistent with the CFB datasets_latest.py comment "
                 "'JPEGImages/brushing_teeth_008.jpg 2'. Not the 12-class UCF-HMDB_full video-DA benchmark."),
    note=("UNVERIFIED: the S2U class list is a reconstruction. Check it against the ST-I2V / CycDA / HiGAN "
          "papers before comparing numbers with the paper's 97.3. The paper's lr rule (x0.1 at 1/2 and 2/3 "
          "of 20 epochs) gives milestones (10, 13); the released code uses [10, 15] for S->U."),
    paper_accuracy=97.3,
)

# --- B2U -----------------------------------------------------------------------------------------------

B2U = Benchmark(
    name="B2U",
    classes=list(UCF101_CLASSES),
    source_dataset="bu101",
    source_class_map={c: [c] for c in UCF101_CLASSES},
    target_dataset="ucf101",
    target_class_map={c: [c] for c in UCF101_CLASSES},
    target_protocol=("UNKNOWN which UCF101 videos the CFB paper uses; by analogy with E2H all 13320 videos are "
                     "used for adaptation and evaluation. CycDA uses the official split (train1 / test1)."),
    verified=True,
    source_note=("The 101 UCF101 classes in ucfTrainTestlist/classInd.txt order, ids shifted to 0-based "
                 "(CycDA utils_img_model/generate_ucf_mapping.py -> UCF_mapping.txt). BU101 "
                 "was collected with the UCF101 class names as queries, so the maps are the identity."),
    paper_accuracy=81.1,
)

# --- registry ------------------------------------------------------------------------------------------

BENCHMARKS: dict[str, Benchmark] = {b.name: b for b in (E2H, S2U, B2U)}

# Modules that register further benchmarks; imported on the first request for a name not yet known.
PLUGIN_MODULES: list[str] = ["data.syn"]


def register_benchmark(benchmark: Benchmark, replace: bool = False) -> Benchmark:
    """Add a benchmark (e.g. ``SYN`` from data/syn.py). Registering an equal one again is a no-op."""
    if not isinstance(benchmark, Benchmark):
        raise TypeError(f"register_benchmark expects a Benchmark, got {type(benchmark).__name__}")
    old = BENCHMARKS.get(benchmark.name)
    if old is not None and old != benchmark and not replace:
        raise ValueError(f"a different benchmark named {benchmark.name!r} is already registered "
                         f"(pass replace=True to override)")
    BENCHMARKS[benchmark.name] = benchmark
    return benchmark


_PLUGINS_MISSING: set[str] = set()


def _load_plugins() -> None:
    """Import the plugin modules (once) and call their ``register()``, which must be idempotent."""
    for name in PLUGIN_MODULES:
        if name in _PLUGINS_MISSING:
            continue
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:  # the plugin exists but is broken: say so
                raise
            _PLUGINS_MISSING.add(name)
            continue
        register = getattr(module, "register", None)
        if callable(register):
            register()


def _lookup(name: str) -> Benchmark | None:
    if name in BENCHMARKS:
        return BENCHMARKS[name]
    matches = [b for key, b in BENCHMARKS.items() if key.upper() == name.upper()]
    return matches[0] if len(matches) == 1 else None


def get_benchmark(name: str) -> Benchmark:
    """The registered benchmark ``name`` (``E2H``, ``S2U``, ``B2U``, ``SYN``; case-insensitive)."""
    found = _lookup(name)
    if found is None:
        _load_plugins()
        found = _lookup(name)
    if found is None:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(benchmark_names())}")
    return found


def benchmark_names() -> list[str]:
    _load_plugins()
    return sorted(BENCHMARKS)


# --- listing a benchmark's data --------------------------------------------------------------------------

def _as_benchmark(benchmark: Benchmark | str) -> Benchmark:
    return get_benchmark(benchmark) if isinstance(benchmark, str) else benchmark


def list_source_items(benchmark: Benchmark | str, root: str | os.PathLike, split: str | None = None,
                      **options: Any) -> tuple[list[Item], list[Skipped]]:
    """The source images of ``benchmark`` under ``root``, labelled in the benchmark's order.
    ``split`` defaults to ``benchmark.source_split``; ``options`` go to the dataset adapter."""
    b = _as_benchmark(benchmark)
    if b.source_dataset == "folder":
        options.setdefault("media", "image")
    return list_dataset(b.source_dataset, os.path.join(root, b.source_subdir), class_map=b.source_class_map,
                        split=b.source_split if split is None else split, **options)


def list_target_items(benchmark: Benchmark | str, root: str | os.PathLike, split: str | None = None,
                      **options: Any) -> tuple[list[Item], list[Skipped]]:
    """The target videos of ``benchmark`` under ``root``, labelled in the benchmark's order (labels are for
    evaluation only). ``split`` defaults to ``benchmark.target_split``; pass ``benchmark.eval_split`` for
    the evaluation set."""
    b = _as_benchmark(benchmark)
    if b.target_dataset == "folder":
        options.setdefault("media", "video")
    return list_dataset(b.target_dataset, os.path.join(root, b.target_subdir), class_map=b.target_class_map,
                        split=b.target_split if split is None else split, **options)


def count_mismatches(items: Sequence[Item], expected: Mapping[str, int] | None) -> dict[str, tuple[int, int]]:
    """``{class: (found, expected)}`` for every class whose item count differs from the published one
    (empty when all match or nothing is published) -- a quick check that a dataset copy is complete."""
    if not expected:
        return {}
    found: dict[str, int] = {}
    for it in items:
        found[it.class_name] = found.get(it.class_name, 0) + 1
    return {c: (found.get(c, 0), n) for c, n in expected.items() if found.get(c, 0) != n}


# --- class names for text prompts ------------------------------------------------------------------------

# A word boundary inside a CamelCase name: lower case or digit then upper case ("YoYo"), or the last capital
# of an acronym before a capitalised word ("ABCWord").
_CAMEL_BOUNDARY = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def readable_class_name(name: str) -> str:
    """A dataset class name as lower-case words for a text prompt (the CLIP branch of Table 5):
    ``ride_bike`` -> ``ride bike``, UCF101's ``ApplyEyeMakeup`` -> ``apply eye makeup``, ``YoYo`` -> ``yo yo``."""
    return " ".join(_CAMEL_BOUNDARY.sub(" ", name).replace("_", " ").replace("-", " ").split()).lower()


def prompt_class_names(benchmark: Benchmark | str) -> list[str]:
    """The benchmark's classes in label order as readable names for text prompts."""
    return [readable_class_name(c) for c in _as_benchmark(benchmark).classes]


__all__ = [
    "Benchmark", "BENCHMARKS", "E2H", "S2U", "B2U", "E2H_CLASSES", "E2H_CFB_CLASS_ORDER",
    "E2H_EAD_FROM_STANFORD40", "S2U_CANDIDATE_MAP", "UCF101_CLASSES", "STANFORD40_CLASSES",
    "register_benchmark", "get_benchmark", "benchmark_names", "with_class_order", "list_source_items",
    "list_target_items", "count_mismatches", "readable_class_name", "prompt_class_names",
]
