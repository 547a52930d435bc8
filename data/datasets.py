"""Dataset adapters: list the media files of a dataset in its standard layout, with labels.

Every adapter has the signature ``list_<dataset>(root, class_map=None, split="all", **options)`` and
returns ``(items, skipped)``: ``items`` is a list of :class:`data.items.Item` sorted by id, ``skipped`` a
list of ``{"path": ..., "reason": ...}`` for everything it saw and did not take (the reasons are the
``SKIP_*`` constants below). Adapters only look at names; they never open the media, decoding is a later
stage.

``class_map`` maps each *benchmark* class, in label order, to the class name(s) it takes from the dataset:
``{"clap": ["applauding"], ...}`` (a plain list of names means "these dataset classes, in this order").
Labels are positions in that order; ``Item.class_name`` is the benchmark class. Without a class map an
adapter uses the dataset's own class list (UCF101 ``classInd.txt``, Stanford40 ``actions.txt``, the 51
HMDB51 classes, the 13 EADs classes, the sorted folder names for ``folder``). Dataset class names are
matched exactly first, then ignoring case, then also ignoring ``_``, ``-`` and spaces (so a BU101 folder
``applyeyemakeup`` or ``Apply_Eye_Makeup`` still finds ``ApplyEyeMakeup``).

Supported layouts (``root`` is what you pass):

- Stanford40: ``root/JPEGImages/<class>_<NNN>.jpg`` (flat; class = file stem ``rsplit('_', 1)[0]``),
  ``root/ImageSplits/<class>_train.txt``, ``<class>_test.txt`` (one file name a line; the global
  ``train.txt``/``test.txt`` are read too) and ``ImageSplits/actions.txt``. ``root`` may also be the
  ``JPEGImages`` folder itself with ``ImageSplits`` beside it. Splits: ``all``, ``train``, ``test``.
- EADs: ``root/<class>/<file>`` images (also ``root/EAD_image_dataset/<class>/...``). Split: ``all``.
- BU101: ``root/<Class>/<file>`` class folders and/or flat files ``root/<Class>_<n>.<ext>`` (the class is
  the file-name prefix before the last ``_``, the variant ST-I2V reads); ``root/images/`` is used when
  present. Both variants may be mixed. Split: ``all``.
- HMDB51: ``root/<class>/<video>.avi`` (also under ``root/avi``, ``root/videos``, ``root/hmdb51_org``),
  split files ``testTrainMulti_7030_splits/<class>_test_split<n>.txt`` (lines ``<video> <0|1|2>``; 1 train,
  2 test, 0 unused) in ``root``, the video folder or beside ``root``. Splits: ``all`` (every video, as
  the transductive E2H protocol uses), ``train1``..``train3``, ``test1``..``test3`` (``train`` = ``train1``).
- UCF101: ``root/UCF-101/<Class>/v_<Class>_gXX_cYY.avi`` (or ``root`` itself holding the class folders),
  ``ucfTrainTestlist/classInd.txt`` (``1 ApplyEyeMakeup``, 1-based), ``trainlist0<n>.txt``
  (``<Class>/<file>.avi <label>``), ``testlist0<n>.txt`` (``<Class>/<file>.avi``) in ``root``, beside the
  video folder, or ``lists_dir=``. Splits as for HMDB51. The class comes from the folder, so the
  ``HandstandPushups/v_HandStandPushups_*`` spelling of the official release is fine.
- folder: ``root/<class>/<file>``, images or videos by extension (``media="image"|"video"|"auto"``),
  ``recursive=True`` to take files in sub-folders of a class folder, ``unlabeled_files=True`` to take
  files lying directly in ``root`` with label -1. Split: ``all``.

Robustness: hidden files/folders, unknown extensions, names that are not valid UTF-8, broken symlinks
and unreadable folders are reported, not fatal. Symlinked folders below a class folder are never
followed and a recursive scan also remembers the folders it has seen, so symlink loops cannot hang a
listing. Item ids are the path relative to the media folder (``UCF-101/``, ``JPEGImages/``, the folder
holding the class folders), POSIX separators, Unicode NFC, so they are the same on every machine.
"""

from __future__ import annotations

import os
import re
import unicodedata
from typing import Any, Callable, Iterable, Mapping, Sequence

from data.items import Item, sorted_items

try:
    from data.errors import BadInputError
except ImportError:  # pragma: no cover - the lead's module may land after this one
    class BadInputError(ValueError):  # type: ignore[no-redef]
        def __init__(self, path, reason):
            super().__init__(f"{path}: {reason}")
            self.path, self.reason = str(path), reason

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})
VIDEO_EXTENSIONS = frozenset({".avi", ".mp4", ".mkv", ".mov", ".webm"})

# Reasons reported in ``skipped``.
SKIP_HIDDEN = "hidden file"
SKIP_HIDDEN_DIR = "hidden directory"
SKIP_EXTENSION = "unknown extension"
SKIP_BAD_NAME = "file name is not valid UTF-8"
SKIP_BROKEN_LINK = "broken symlink"
SKIP_NOT_FILE = "not a regular file"
SKIP_SYMLINK_DIR = "symlinked directory not followed"
SKIP_UNREADABLE = "unreadable directory"
SKIP_SUBDIR = "subdirectory in class folder not scanned"
SKIP_OUTSIDE_CLASS = "file outside a class folder"
SKIP_UNEXPECTED_DIR = "unexpected directory"
SKIP_NOT_IN_MAP = "class not in class map"
SKIP_NO_CLASS_IN_NAME = "cannot parse class from file name"
SKIP_NO_FILES = "class has no files"
SKIP_NO_FILES_IN_SPLIT = "class has no files in split"
SKIP_NOT_IN_SPLIT = "not in split file"
SKIP_LISTED_MISSING = "listed in split file but missing"
SKIP_SPLIT_FILE_MISSING = "split file missing"

Skipped = dict  # {"path": str, "reason": str}
ClassMap = Mapping[str, "str | Sequence[str]"]

# --- the datasets' own class lists -------------------------------------------------------------------

# UCF101 ucfTrainTestlist/classInd.txt, in file order (label = position, i.e. classInd id - 1).
UCF101_CLASSES: tuple[str, ...] = (
    "ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "BandMarching",
    "BaseballPitch", "Basketball", "BasketballDunk", "BenchPress", "Biking", "Billiards", "BlowDryHair",
    "BlowingCandles", "BodyWeightSquats", "Bowling", "BoxingPunchingBag", "BoxingSpeedBag", "BreastStroke",
    "BrushingTeeth", "CleanAndJerk", "CliffDiving", "CricketBowling", "CricketShot", "CuttingInKitchen",
    "Diving", "Drumming", "Fencing", "FieldHockeyPenalty", "FloorGymnastics", "FrisbeeCatch", "FrontCrawl",
    "GolfSwing", "Haircut", "Hammering", "HammerThrow", "HandstandPushups", "HandstandWalking",
    "HeadMassage", "HighJump", "HorseRace", "HorseRiding", "HulaHoop", "IceDancing", "JavelinThrow",
    "JugglingBalls", "JumpingJack", "JumpRope", "Kayaking", "Knitting", "LongJump", "Lunges",
    "MilitaryParade", "Mixing", "MoppingFloor", "Nunchucks", "ParallelBars", "PizzaTossing", "PlayingCello",
    "PlayingDaf", "PlayingDhol", "PlayingFlute", "PlayingGuitar", "PlayingPiano", "PlayingSitar",
    "PlayingTabla", "PlayingViolin", "PoleVault", "PommelHorse", "PullUps", "Punch", "PushUps", "Rafting",
    "RockClimbingIndoor", "RopeClimbing", "Rowing", "SalsaSpin", "ShavingBeard", "Shotput", "SkateBoarding",
    "Skiing", "Skijet", "SkyDiving", "SoccerJuggling", "SoccerPenalty", "StillRings", "SumoWrestling",
    "Surfing", "Swing", "TableTennisShot", "TaiChi", "TennisSwing", "ThrowDiscus", "TrampolineJumping",
    "Typing", "UnevenBars", "VolleyballSpiking", "WalkingWithDog", "WallPushups", "WritingOnBoard", "YoYo",
)

# HMDB51 class folders (alphabetical, as in testTrainMulti_7030_splits).
HMDB51_CLASSES: tuple[str, ...] = (
    "brush_hair", "cartwheel", "catch", "chew", "clap", "climb", "climb_stairs", "dive", "draw_sword",
    "dribble", "drink", "eat", "fall_floor", "fencing", "flic_flac", "golf", "handstand", "hit", "hug",
    "jump", "kick", "kick_ball", "kiss", "laugh", "pick", "pour", "pullup", "punch", "push", "pushup",
    "ride_bike", "ride_horse", "run", "shake_hands", "shoot_ball", "shoot_bow", "shoot_gun", "sit", "situp",
    "smile", "smoke", "somersault", "stand", "swing_baseball", "sword", "sword_exercise", "talk", "throw",
    "turn", "walk", "wave",
)

# Stanford40 action names (the file-name prefixes in JPEGImages/). actions.txt, when present, gives the order.
STANFORD40_CLASSES: tuple[str, ...] = (
    "applauding", "blowing_bubbles", "brushing_teeth", "cleaning_the_floor", "climbing", "cooking",
    "cutting_trees", "cutting_vegetables", "drinking", "feeding_a_horse", "fishing", "fixing_a_bike",
    "fixing_a_car", "gardening", "holding_an_umbrella", "jumping", "looking_through_a_microscope",
    "looking_through_a_telescope", "playing_guitar", "playing_violin", "pouring_liquid", "pushing_a_cart",
    "reading", "phoning", "riding_a_bike", "riding_a_horse", "rowing_a_boat", "running", "shooting_an_arrow",
    "smoking", "taking_photos", "texting_message", "throwing_frisby", "using_a_computer", "walking_the_dog",
    "washing_dishes", "watching_TV", "waving_hands", "writing_on_a_board", "writing_on_a_book",
)

# EADs class folders in ST-I2V's label order (sourcelistname_My_E.txt).
EAD_CLASSES: tuple[str, ...] = (
    "hug", "kick", "talk", "wave", "push", "clap", "kiss", "climb", "smoke", "jump", "drink", "pour", "run",
)


def media_kind(path: str | os.PathLike) -> str | None:
    """``"image"``, ``"video"`` or None, by file extension (case-insensitive)."""
    ext = os.path.splitext(os.fspath(path))[1].lower()
    if ext in IMAGE_EXTENSIONS:
        return "image"
    if ext in VIDEO_EXTENSIONS:
        return "video"
    return None


# --- class maps --------------------------------------------------------------------------------------

def _loose(name: str) -> str:
    return re.sub(r"[\s_\-]+", "", name).casefold()


def normalize_class_map(class_map: ClassMap | Sequence[str]) -> dict[str, tuple[str, ...]]:
    """``{benchmark class: (dataset class names, ...)}`` in label order; a list of names maps each to itself."""
    if isinstance(class_map, Mapping):
        pairs = [(k, (v,) if isinstance(v, str) else tuple(v)) for k, v in class_map.items()]
    elif isinstance(class_map, (str, bytes)):
        raise TypeError("class_map must be a mapping or a list of class names, not a string")
    else:
        pairs = [(c, (c,)) for c in class_map]
    out: dict[str, tuple[str, ...]] = {}
    owner: dict[str, str] = {}
    for bench, names in pairs:
        if not isinstance(bench, str) or not bench:
            raise ValueError(f"class map keys must be non-empty strings, got {bench!r}")
        if bench in out:
            raise ValueError(f"class {bench!r} appears twice in the class map")
        if not names:
            raise ValueError(f"class {bench!r} maps to no dataset class")
        for n in names:
            if not isinstance(n, str) or not n:
                raise ValueError(f"class {bench!r}: dataset class names must be non-empty strings, got {n!r}")
            if n in owner:
                raise ValueError(f"dataset class {n!r} is mapped to both {owner[n]!r} and {bench!r}")
            owner[n] = bench
        out[bench] = names
    if not out:
        raise ValueError("the class map is empty")
    return out


class _Classes:
    """Resolve dataset class names (exact, then case-insensitive, then loose) to benchmark labels."""

    def __init__(self, class_map: ClassMap | Sequence[str] | None, default: Sequence[str]):
        self.map = normalize_class_map(class_map if class_map is not None else list(default))
        self.classes = list(self.map)
        self.label_of: dict[str, int] = {}  # dataset name -> label
        for label, names in enumerate(self.map.values()):
            for n in names:
                self.label_of[n] = label
        self._fold = self._unique(str.casefold)
        self._loose = self._unique(_loose)

    def _unique(self, key: Callable[[str], str]) -> dict[str, str]:
        table: dict[str, str | None] = {}
        for n in self.label_of:
            k = key(n)
            table[k] = None if k in table and table[k] != n else n
        return {k: v for k, v in table.items() if v is not None}

    def resolve(self, dataset_name: str) -> str | None:
        """The class-map spelling of ``dataset_name``, or None when the map does not use it."""
        if dataset_name in self.label_of:
            return dataset_name
        return self._fold.get(dataset_name.casefold()) or self._loose.get(_loose(dataset_name))

    def item(self, canonical: str, item_id: str, path: str) -> Item:
        label = self.label_of[canonical]
        return Item(id=item_id, path=path, label=label, class_name=self.classes[label])


# --- file-system helpers -----------------------------------------------------------------------------

def _printable(path: str) -> str:
    return path.encode("utf-8", "backslashreplace").decode("utf-8")


def _skip(skipped: list[Skipped], path: str | os.PathLike, reason: str) -> None:
    skipped.append({"path": _printable(os.fspath(path)), "reason": reason})


def _utf8_ok(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _rel_id(path: str, media_dir: str) -> str:
    return _nfc(os.path.relpath(path, media_dir).replace(os.sep, "/"))


def _scandir(directory: str, skipped: list[Skipped]) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except OSError:
        _skip(skipped, directory, SKIP_UNREADABLE)
        return []
    return sorted(entries, key=lambda e: e.name)


def _kind(entry: os.DirEntry) -> str:
    """file | dir | symlink_dir | broken | other, without ever raising."""
    try:
        is_link = entry.is_symlink()
    except OSError:
        return "other"
    if is_link:
        try:  # a link to itself raises ELOOP here rather than answering False
            if entry.is_dir():
                return "symlink_dir"
            if entry.is_file():
                return "file"
        except OSError:
            pass
        return "broken"
    try:
        if entry.is_dir(follow_symlinks=False):
            return "dir"
        if entry.is_file(follow_symlinks=False):
            return "file"
    except OSError:
        pass
    return "other"


def _accept_file(entry: os.DirEntry, kind: str, exts: frozenset[str], skipped: list[Skipped]) -> bool:
    """Checks shared by every file an adapter meets (hidden and name checks are done by the caller)."""
    if kind == "broken":
        _skip(skipped, entry.path, SKIP_BROKEN_LINK)
        return False
    if kind != "file":
        _skip(skipped, entry.path, SKIP_NOT_FILE)
        return False
    if os.path.splitext(entry.name)[1].lower() not in exts:
        _skip(skipped, entry.path, SKIP_EXTENSION)
        return False
    return True


def _name_ok(entry: os.DirEntry, kind: str, skipped: list[Skipped]) -> bool:
    if entry.name.startswith("."):
        _skip(skipped, entry.path, SKIP_HIDDEN_DIR if kind in ("dir", "symlink_dir") else SKIP_HIDDEN)
        return False
    if not _utf8_ok(entry.name):
        _skip(skipped, entry.path, SKIP_BAD_NAME)
        return False
    return True


def _class_folder_files(class_dir: str, exts: frozenset[str], skipped: list[Skipped],
                        recursive: bool) -> list[str]:
    """Media files in one class folder. Symlinked sub-folders are not followed; folders already seen
    (by device and inode) are not scanned twice, so no layout can make this loop."""
    found: list[str] = []
    stack = [class_dir]
    seen: set[tuple[int, int]] = set()
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
        except OSError:
            _skip(skipped, directory, SKIP_UNREADABLE)
            continue
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        subdirs = []
        for entry in _scandir(directory, skipped):
            kind = _kind(entry)
            if not _name_ok(entry, kind, skipped):
                continue
            if kind == "dir":
                if recursive:
                    subdirs.append(entry.path)
                else:
                    _skip(skipped, entry.path, SKIP_SUBDIR)
            elif kind == "symlink_dir":
                _skip(skipped, entry.path, SKIP_SYMLINK_DIR if recursive else SKIP_SUBDIR)
            elif _accept_file(entry, kind, exts, skipped):
                found.append(entry.path)
        stack.extend(reversed(subdirs))
    return found


def _find_media_dir(root: str, candidates: Sequence[str], classes: _Classes | None) -> str:
    """``root`` if it holds a class folder of the map, else the first existing candidate sub-folder
    (``UCF-101``, ``images``, ...) that does, else the first existing candidate, else ``root``."""
    def has_class_dir(d: str) -> bool:
        if classes is None:
            return False
        try:
            with os.scandir(d) as it:
                return any(classes.resolve(e.name) is not None and _kind(e) in ("dir", "symlink_dir")
                           for e in it if _utf8_ok(e.name))
        except OSError:
            return False

    if has_class_dir(root):
        return root
    existing = [os.path.join(root, c) for c in candidates if os.path.isdir(os.path.join(root, c))]
    for d in existing:
        if has_class_dir(d):
            return d
    return existing[0] if existing else root


def _require_dir(path: str, what: str) -> None:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: directory {path!r} does not exist")


def _finish(items: list[Item], skipped: list[Skipped]) -> tuple[list[Item], list[Skipped]]:
    return sorted_items(items), sorted(skipped, key=lambda s: (s["path"], s["reason"]))


def _report_missing_classes(classes: _Classes, found: set[str], media_dir: str, flat: bool,
                            skipped: list[Skipped]) -> None:
    for name in classes.label_of:
        if name not in found:
            where = os.path.join(media_dir, f"{name}_*" if flat else name)
            _skip(skipped, where, SKIP_NO_FILES)


def _report_empty_after_split(classes: _Classes, found: set[str], items: list[Item], media_dir: str,
                              flat: bool, skipped: list[Skipped]) -> None:
    kept = {it.label for it in items}
    for name, label in classes.label_of.items():
        if name in found and label not in kept:
            where = os.path.join(media_dir, f"{name}_*" if flat else name)
            _skip(skipped, where, SKIP_NO_FILES_IN_SPLIT)


def _scan_class_folders(media_dir: str, classes: _Classes, exts: frozenset[str], skipped: list[Skipped], *,
                        recursive: bool = False, ignore: Iterable[str] = (),
                        top_files: str = "skip") -> tuple[list[Item], set[str]]:
    """Scan ``media_dir/<class>/<file>``. ``top_files`` says what files directly in ``media_dir`` are:
    ``"skip"`` (reported), ``"prefix"`` (class = stem before the last ``_``) or ``"unlabeled"`` (label -1)."""
    items: list[Item] = []
    found: set[str] = set()
    ignore = set(ignore)
    for entry in _scandir(media_dir, skipped):
        if entry.name in ignore:
            continue
        kind = _kind(entry)
        if not _name_ok(entry, kind, skipped):
            continue
        if kind in ("dir", "symlink_dir"):
            canonical = classes.resolve(entry.name)
            if canonical is None:
                _skip(skipped, entry.path, SKIP_NOT_IN_MAP)
                continue
            for path in _class_folder_files(entry.path, exts, skipped, recursive):
                items.append(classes.item(canonical, _rel_id(path, media_dir), path))
                found.add(canonical)
            continue
        if top_files == "skip":
            if kind in ("file", "broken"):
                _skip(skipped, entry.path, SKIP_OUTSIDE_CLASS)
            else:
                _skip(skipped, entry.path, SKIP_NOT_FILE)
            continue
        if not _accept_file(entry, kind, exts, skipped):
            continue
        if top_files == "unlabeled":
            items.append(Item(id=_rel_id(entry.path, media_dir), path=entry.path, label=-1, class_name=""))
            continue
        canonical = _class_from_prefix(entry, classes, skipped)
        if canonical is not None:
            items.append(classes.item(canonical, _rel_id(entry.path, media_dir), entry.path))
            found.add(canonical)
    return items, found


def _class_from_prefix(entry: os.DirEntry, classes: _Classes, skipped: list[Skipped]) -> str | None:
    stem = os.path.splitext(entry.name)[0]
    if "_" not in stem:
        _skip(skipped, entry.path, SKIP_NO_CLASS_IN_NAME)
        return None
    canonical = classes.resolve(stem.rsplit("_", 1)[0])
    if canonical is None:
        _skip(skipped, entry.path, SKIP_NOT_IN_MAP)
    return canonical


# --- split files ---------------------------------------------------------------------------------------

def _parse_split(split: str, dataset: str, numbered: bool) -> tuple[str, int | None]:
    """``"all"`` -> ("all", None); ``"train2"`` -> ("train", 2); ``"train"`` -> ("train", 1) if numbered."""
    text = str(split).strip().lower()
    if text == "all":
        return "all", None
    m = re.fullmatch(r"(train|test)([123])?", text)
    if m is None or (m.group(2) and not numbered):
        allowed = "'all', 'train1'..'train3', 'test1'..'test3'" if numbered else "'all', 'train', 'test'"
        raise ValueError(f"{dataset}: unknown split {split!r}; use {allowed}")
    return m.group(1), (int(m.group(2) or 1) if numbered else None)


def _only_all(split: str, dataset: str) -> None:
    if str(split).strip().lower() != "all":
        raise ValueError(f"{dataset}: this dataset has no official splits; use split='all', got {split!r}")


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise BadInputError(path, f"cannot read split file ({exc.strerror or exc})") from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _first_dir(candidates: Iterable[str | None]) -> str | None:
    for c in candidates:
        if c and os.path.isdir(c):
            return c
    return None


class _Membership:
    """Which partition each listed file belongs to; looked up exactly, then ignoring case."""

    def __init__(self) -> None:
        self.exact: dict[str, str] = {}
        self.fold: dict[str, str] = {}

    def add(self, key: str, part: str) -> None:
        key = _nfc(key)
        self.exact[key] = part
        self.fold.setdefault(key.casefold(), part)

    def get(self, key: str) -> str | None:
        key = _nfc(key)
        part = self.exact.get(key)
        return part if part is not None else self.fold.get(key.casefold())


def _apply_split(items: list[Item], member_key: Callable[[Item], str], membership: _Membership, part: str,
                 listed: Iterable[tuple[str, str]], have: set[str], skipped: list[Skipped]) -> list[Item]:
    """Keep items in partition ``part``; report on-disk files no split file lists, and files the split
    lists for ``part`` (``listed``: (key, expected path)) that are not on disk."""
    kept = []
    for it in items:
        where = membership.get(member_key(it))
        if where is None:
            _skip(skipped, it.path, SKIP_NOT_IN_SPLIT)
        elif where == part:
            kept.append(it)
    have_fold = {k.casefold() for k in have}
    for key, expected in listed:
        key = _nfc(key)
        if key not in have and key.casefold() not in have_fold:
            _skip(skipped, expected, SKIP_LISTED_MISSING)
    return kept


def _rsplit_label(line: str) -> str:
    """``"<path> <number>"`` -> path; a line without a trailing number is all path."""
    parts = line.rsplit(maxsplit=1)
    if len(parts) == 2 and parts[1].lstrip("-").isdigit():
        return parts[0]
    return line


# --- adapters ------------------------------------------------------------------------------------------

def _stanford40_actions(splits_dir: str | None) -> list[str] | None:
    if splits_dir is None or not os.path.isfile(os.path.join(splits_dir, "actions.txt")):
        return None
    names = []
    for line in _read_lines(os.path.join(splits_dir, "actions.txt")):
        name = line.split()[0]
        if name.lower() not in ("action_name", "action", "name"):
            names.append(name)
    return names or None


def list_stanford40(root: str | os.PathLike, class_map: ClassMap | Sequence[str] | None = None,
                    split: str = "all", splits_dir: str | os.PathLike | None = None
                    ) -> tuple[list[Item], list[Skipped]]:
    """Stanford40: flat ``JPEGImages/<class>_<NNN>.jpg``; class = stem ``rsplit('_', 1)[0]``.
    ``split``: ``all`` (every image) or the official ``train`` / ``test`` from ``ImageSplits/``."""
    root = os.path.abspath(os.fspath(root))
    _require_dir(root, "Stanford40 root")
    if os.path.isdir(os.path.join(root, "JPEGImages")):
        images_dir = os.path.join(root, "JPEGImages")
    elif os.path.basename(root) == "JPEGImages":
        images_dir = root
    else:
        raise FileNotFoundError(f"Stanford40: expected {os.path.join(root, 'JPEGImages')!r} (flat folder of "
                                f"<class>_<NNN>.jpg) -- is {root!r} the Stanford40 root?")
    splits_dir = _first_dir([os.fspath(splits_dir) if splits_dir else None,
                             os.path.join(root, "ImageSplits"),
                             os.path.join(os.path.dirname(images_dir), "ImageSplits")])
    part, _ = _parse_split(split, "Stanford40", numbered=False)
    classes = _Classes(class_map, _stanford40_actions(splits_dir) or STANFORD40_CLASSES)

    skipped: list[Skipped] = []
    items: list[Item] = []
    found: set[str] = set()
    for entry in _scandir(images_dir, skipped):
        kind = _kind(entry)
        if not _name_ok(entry, kind, skipped):
            continue
        if kind in ("dir", "symlink_dir"):
            _skip(skipped, entry.path, SKIP_UNEXPECTED_DIR)
            continue
        if not _accept_file(entry, kind, IMAGE_EXTENSIONS, skipped):
            continue
        canonical = _class_from_prefix(entry, classes, skipped)
        if canonical is not None:
            items.append(classes.item(canonical, _rel_id(entry.path, images_dir), entry.path))
            found.add(canonical)
    _report_missing_classes(classes, found, images_dir, True, skipped)

    if part != "all":
        if splits_dir is None:
            raise FileNotFoundError(f"Stanford40: split {split!r} needs {os.path.join(root, 'ImageSplits')!r}")
        membership = _Membership()
        listed: list[tuple[str, str]] = []
        split_files = sorted(p for p in os.listdir(splits_dir)
                             if re.fullmatch(r"(.+_)?(train|test)\.txt", p))
        if not split_files:
            raise FileNotFoundError(f"Stanford40: no <class>_train.txt / <class>_test.txt in {splits_dir!r}")
        for fname in split_files:
            file_part = "train" if fname.endswith("train.txt") else "test"
            for line in _read_lines(os.path.join(splits_dir, fname)):
                name = _rsplit_label(line)
                membership.add(name, file_part)
                stem = os.path.splitext(name)[0]
                if (file_part == part and "_" in stem
                        and classes.resolve(stem.rsplit("_", 1)[0]) is not None):
                    listed.append((name, os.path.join(images_dir, name)))
        have = {it.id for it in items}
        items = _apply_split(items, lambda it: it.id, membership, part, dict(listed).items(), have, skipped)
        _report_empty_after_split(classes, found, items, images_dir, True, skipped)
    return _finish(items, skipped)


def list_eads(root: str | os.PathLike, class_map: ClassMap | Sequence[str] | None = None,
              split: str = "all") -> tuple[list[Item], list[Skipped]]:
    """EADs (the E2H source): ``root/<class>/<file>.jpg``; default classes in ST-I2V's order."""
    root = os.path.abspath(os.fspath(root))
    _require_dir(root, "EADs root")
    _only_all(split, "EADs")
    classes = _Classes(class_map, EAD_CLASSES)
    media_dir = _find_media_dir(root, ["EAD_image_dataset"], classes)
    skipped: list[Skipped] = []
    items, found = _scan_class_folders(media_dir, classes, IMAGE_EXTENSIONS, skipped)
    _report_missing_classes(classes, found, media_dir, False, skipped)
    return _finish(items, skipped)


def list_bu101(root: str | os.PathLike, class_map: ClassMap | Sequence[str] | None = None,
               split: str = "all") -> tuple[list[Item], list[Skipped]]:
    """BU101 (the B2U source): class folders ``<Class>/<file>`` and/or flat ``<Class>_<n>.<ext>`` files
    (class = prefix before the last ``_``), under ``root/images`` when it exists, else ``root``."""
    root = os.path.abspath(os.fspath(root))
    _require_dir(root, "BU101 root")
    _only_all(split, "BU101")
    classes = _Classes(class_map, UCF101_CLASSES)
    media_dir = _find_media_dir(root, ["images"], classes)
    skipped: list[Skipped] = []
    items, found = _scan_class_folders(media_dir, classes, IMAGE_EXTENSIONS, skipped, top_files="prefix")
    _report_missing_classes(classes, found, media_dir, False, skipped)
    return _finish(items, skipped)


HMDB51_SPLITS_DIR = "testTrainMulti_7030_splits"


def list_hmdb51(root: str | os.PathLike, class_map: ClassMap | Sequence[str] | None = None,
                split: str = "all", splits_dir: str | os.PathLike | None = None
                ) -> tuple[list[Item], list[Skipped]]:
    """HMDB51: ``root/<class>/<video>.avi``. ``split="all"`` takes every video of the mapped classes (the
    transductive E2H protocol); ``train<n>``/``test<n>`` use ``<class>_test_split<n>.txt`` (1 train, 2 test,
    0 unused)."""
    root = os.path.abspath(os.fspath(root))
    _require_dir(root, "HMDB51 root")
    part, number = _parse_split(split, "HMDB51", numbered=True)
    classes = _Classes(class_map, HMDB51_CLASSES)
    media_dir = _find_media_dir(root, ["avi", "videos", "hmdb51_org", "hmdb51"], classes)
    skipped: list[Skipped] = []
    items, found = _scan_class_folders(media_dir, classes, VIDEO_EXTENSIONS, skipped,
                                       ignore=[HMDB51_SPLITS_DIR])
    _report_missing_classes(classes, found, media_dir, False, skipped)
    if part == "all":
        return _finish(items, skipped)

    sdir = _first_dir([os.fspath(splits_dir) if splits_dir else None,
                       os.path.join(root, HMDB51_SPLITS_DIR), os.path.join(media_dir, HMDB51_SPLITS_DIR),
                       os.path.join(os.path.dirname(root), HMDB51_SPLITS_DIR)])
    if sdir is None:
        raise FileNotFoundError(f"HMDB51: split {split!r} needs the folder {HMDB51_SPLITS_DIR!r} in {root!r} "
                                f"or beside it (or pass splits_dir=)")
    want = {"train": "1", "test": "2"}[part]
    membership = _Membership()
    listed: list[tuple[str, str]] = []
    with_split_file: set[str] = set()
    class_dirs = {}
    for it in items:  # the on-disk spelling of each class folder
        class_dirs.setdefault(classes.resolve(it.id.split("/", 1)[0]), it.id.split("/", 1)[0])
    for name in classes.label_of:
        split_file = os.path.join(sdir, f"{name}_test_split{number}.txt")
        if not os.path.isfile(split_file):
            _skip(skipped, split_file, SKIP_SPLIT_FILE_MISSING)
            continue
        with_split_file.add(name)
        folder = class_dirs.get(name, name)
        for line in _read_lines(split_file):
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
                raise BadInputError(split_file, f"line {line!r} is not '<video> <0|1|2>'")
            key = f"{folder}/{parts[0]}"
            membership.add(key, {"1": "train", "2": "test", "0": "unused"}[parts[1]])
            if parts[1] == want:
                listed.append((key, os.path.join(media_dir, folder, parts[0])))
    items = [it for it in items if classes.resolve(it.id.split("/", 1)[0]) in with_split_file]
    have = {it.id for it in items}
    items = _apply_split(items, lambda it: it.id, membership, part, listed, have, skipped)
    _report_empty_after_split(classes, found, items, media_dir, False, skipped)
    return _finish(items, skipped)


UCF101_LISTS_DIR = "ucfTrainTestlist"


def read_class_ind(path: str | os.PathLike) -> list[str]:
    """UCF101 ``classInd.txt`` (``<1-based id> <Class>``) -> class names by 0-based label."""
    path = os.fspath(path)
    table: dict[int, str] = {}
    for line in _read_lines(path):
        parts = line.split()
        if len(parts) != 2 or not parts[0].isdigit():
            raise BadInputError(path, f"line {line!r} is not '<id> <ClassName>'")
        table[int(parts[0])] = parts[1]
    if sorted(table) != list(range(1, len(table) + 1)):
        raise BadInputError(path, "class ids are not 1..N without gaps")
    return [table[i] for i in range(1, len(table) + 1)]


def list_ucf101(root: str | os.PathLike, class_map: ClassMap | Sequence[str] | None = None,
                split: str = "all", lists_dir: str | os.PathLike | None = None
                ) -> tuple[list[Item], list[Skipped]]:
    """UCF101: ``UCF-101/<Class>/<video>.avi``; default classes from ``classInd.txt`` (else the official
    list). ``split="all"`` or ``train<n>``/``test<n>`` from ``ucfTrainTestlist/{train,test}list0<n>.txt``."""
    root = os.path.abspath(os.fspath(root))
    _require_dir(root, "UCF101 root")
    part, number = _parse_split(split, "UCF101", numbered=True)
    ldir_guess = _first_dir([os.fspath(lists_dir) if lists_dir else None, os.path.join(root, UCF101_LISTS_DIR),
                             os.path.join(os.path.dirname(root), UCF101_LISTS_DIR)])
    class_ind = os.path.join(ldir_guess, "classInd.txt") if ldir_guess else None
    default = read_class_ind(class_ind) if class_ind and os.path.isfile(class_ind) else UCF101_CLASSES
    classes = _Classes(class_map, default)
    media_dir = _find_media_dir(root, ["UCF-101", "UCF101", "videos"], classes)
    ldir = ldir_guess or _first_dir([os.path.join(os.path.dirname(media_dir), UCF101_LISTS_DIR)])
    skipped: list[Skipped] = []
    items, found = _scan_class_folders(media_dir, classes, VIDEO_EXTENSIONS, skipped, ignore=[UCF101_LISTS_DIR])
    _report_missing_classes(classes, found, media_dir, False, skipped)
    if part == "all":
        return _finish(items, skipped)

    if ldir is None:
        raise FileNotFoundError(f"UCF101: split {split!r} needs {UCF101_LISTS_DIR!r} in or beside {root!r} "
                                f"(or pass lists_dir=)")
    membership = _Membership()
    listed: list[tuple[str, str]] = []
    for file_part in ("train", "test"):
        list_file = os.path.join(ldir, f"{file_part}list0{number}.txt")
        if not os.path.isfile(list_file):
            raise FileNotFoundError(f"UCF101: split {split!r} needs {list_file!r}")
        for line in _read_lines(list_file):
            rel = _rsplit_label(line).replace("\\", "/").lstrip("/")
            membership.add(rel, file_part)
            if file_part == part and "/" in rel and classes.resolve(rel.split("/", 1)[0]) is not None:
                listed.append((rel, os.path.join(media_dir, *rel.split("/"))))
    have = {it.id for it in items}
    items = _apply_split(items, lambda it: it.id, membership, part, listed, have, skipped)
    _report_empty_after_split(classes, found, items, media_dir, False, skipped)
    return _finish(items, skipped)


def list_folder(root: str | os.PathLike, class_map: ClassMap | Sequence[str] | None = None,
                split: str = "all", media: str = "auto", recursive: bool = False,
                unlabeled_files: bool = False) -> tuple[list[Item], list[Skipped]]:
    """Your own data: ``root/<class>/<file>``; classes = sorted folder names unless a class map is given.
    ``media``: ``"image"``, ``"video"`` or ``"auto"`` (both, told apart later by extension)."""
    root = os.path.abspath(os.fspath(root))
    _require_dir(root, "folder dataset root")
    _only_all(split, "folder")
    exts = {"image": IMAGE_EXTENSIONS, "video": VIDEO_EXTENSIONS,
            "auto": IMAGE_EXTENSIONS | VIDEO_EXTENSIONS}.get(media)
    if exts is None:
        raise ValueError(f"folder: media must be 'image', 'video' or 'auto', got {media!r}")
    if class_map is None:
        names = []
        for entry in _scandir(root, []):
            if (not entry.name.startswith(".") and _utf8_ok(entry.name)
                    and _kind(entry) in ("dir", "symlink_dir")):
                names.append(entry.name)
        if not names:
            raise FileNotFoundError(f"folder: no class folders in {root!r} (expected root/<class>/<file>)")
        class_map = sorted(names)
    classes = _Classes(class_map, ())
    skipped: list[Skipped] = []
    items, found = _scan_class_folders(root, classes, exts, skipped, recursive=recursive,
                                       top_files="unlabeled" if unlabeled_files else "skip")
    _report_missing_classes(classes, found, root, False, skipped)
    return _finish(items, skipped)


# --- registry ------------------------------------------------------------------------------------------

Adapter = Callable[..., "tuple[list[Item], list[Skipped]]"]

ADAPTERS: dict[str, Adapter] = {
    "stanford40": list_stanford40,
    "eads": list_eads,
    "bu101": list_bu101,
    "hmdb51": list_hmdb51,
    "ucf101": list_ucf101,
    "folder": list_folder,
}


def register_adapter(name: str, adapter: Adapter, replace: bool = False) -> None:
    """Add a dataset adapter ``adapter(root, class_map=None, split="all", **options) -> (items, skipped)``."""
    key = name.lower()
    if key in ADAPTERS and ADAPTERS[key] is not adapter and not replace:
        raise ValueError(f"a dataset adapter named {name!r} already exists")
    ADAPTERS[key] = adapter


def get_adapter(name: str) -> Adapter:
    try:
        return ADAPTERS[name.lower()]
    except KeyError:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(ADAPTERS))}") from None


def list_dataset(name: str, root: str | os.PathLike, class_map: ClassMap | Sequence[str] | None = None,
                 split: str = "all", **options: Any) -> tuple[list[Item], list[Skipped]]:
    """List dataset ``name`` (a key of :data:`ADAPTERS`) at ``root``."""
    return get_adapter(name)(root, class_map=class_map, split=split, **options)


def summarize_skipped(skipped: Sequence[Skipped]) -> dict[str, int]:
    """How many files were skipped for each reason (for logs and item-list metadata)."""
    counts: dict[str, int] = {}
    for s in skipped:
        counts[s["reason"]] = counts.get(s["reason"], 0) + 1
    return dict(sorted(counts.items()))
