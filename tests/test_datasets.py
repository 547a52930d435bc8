"""Dataset adapters, benchmark class maps and item lists, on tiny trees in each dataset's real layout.

The adapters never open media, so empty files stand in for images and videos.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from data import datasets as ds
from data.benchmarks import (B2U, BENCHMARKS, E2H, E2H_CFB_CLASS_ORDER, S2U, Benchmark,
                             count_mismatches, get_benchmark, list_source_items, list_target_items,
                             register_benchmark, with_class_order)
from data.items import Item, read_items, shard_slice, write_items


def touch(root: Path, *rels: str) -> None:
    for rel in rels:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"")


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")


def reasons(skipped, reason):
    return sorted(Path(s["path"]).name for s in skipped if s["reason"] == reason)


def ids(items):
    return [it.id for it in items]


# --- Stanford40 ----------------------------------------------------------------------------------------

@pytest.fixture
def stanford40(tmp_path):
    root = tmp_path / "Stanford40"
    touch(root / "JPEGImages", "applauding_001.jpg", "applauding_002.jpg", "brushing_teeth_001.jpg",
          "brushing_teeth_002.jpg", "climbing_001.jpg", "climbing_002.jpg", "watching_TV_001.jpg")
    splits = root / "ImageSplits"
    write(splits / "actions.txt", "action_name\tnumber_of_images\napplauding\t2\nbrushing_teeth\t2\n"
                                  "climbing\t2\nwatching_TV\t1\n")
    write(splits / "applauding_train.txt", "applauding_001.jpg\n")
    write(splits / "applauding_test.txt", "applauding_002.jpg\n")
    write(splits / "brushing_teeth_train.txt", "brushing_teeth_001.jpg\r\n")
    write(splits / "brushing_teeth_test.txt", "brushing_teeth_002.jpg\r\n")
    write(splits / "climbing_train.txt", "climbing_001.jpg\n")
    write(splits / "climbing_test.txt", "climbing_002.jpg\n")
    write(splits / "watching_TV_train.txt", "watching_TV_001.jpg\n")
    write(splits / "watching_TV_test.txt", "")
    return root


def test_stanford40_all_images_class_from_file_name(stanford40):
    items, skipped = ds.list_stanford40(stanford40)
    assert ids(items) == ["applauding_001.jpg", "applauding_002.jpg", "brushing_teeth_001.jpg",
                          "brushing_teeth_002.jpg", "climbing_001.jpg", "climbing_002.jpg",
                          "watching_TV_001.jpg"]
    # without a class map the labels follow actions.txt
    assert [(it.class_name, it.label) for it in items][::2] == [
        ("applauding", 0), ("brushing_teeth", 1), ("climbing", 2), ("watching_TV", 3)]
    assert skipped == []
    assert Path(items[0].path) == stanford40 / "JPEGImages" / "applauding_001.jpg"


def test_stanford40_split_and_class_map(stanford40):
    cmap = {"BrushingTeeth": ["brushing_teeth"], "RockClimbingIndoor": "climbing"}
    train, skipped = ds.list_stanford40(stanford40, cmap, split="train")
    assert [(it.id, it.label, it.class_name) for it in train] == [
        ("brushing_teeth_001.jpg", 0, "BrushingTeeth"), ("climbing_001.jpg", 1, "RockClimbingIndoor")]
    assert reasons(skipped, ds.SKIP_NOT_IN_MAP) == ["applauding_001.jpg", "applauding_002.jpg",
                                                    "watching_TV_001.jpg"]
    test, _ = ds.list_stanford40(stanford40, cmap, split="test")
    assert ids(test) == ["brushing_teeth_002.jpg", "climbing_002.jpg"]


def test_stanford40_split_reports_listed_but_missing_and_unlisted(stanford40):
    (stanford40 / "JPEGImages" / "climbing_001.jpg").unlink()
    touch(stanford40 / "JPEGImages", "climbing_003.jpg")
    items, skipped = ds.list_stanford40(stanford40, ["climbing"], split="train")
    assert items == []
    assert reasons(skipped, ds.SKIP_LISTED_MISSING) == ["climbing_001.jpg"]
    assert reasons(skipped, ds.SKIP_NOT_IN_SPLIT) == ["climbing_003.jpg"]
    assert reasons(skipped, ds.SKIP_NO_FILES_IN_SPLIT) == ["climbing_*"]


def test_stanford40_rejects_numbered_split_and_missing_layout(stanford40, tmp_path):
    with pytest.raises(ValueError, match="split"):
        ds.list_stanford40(stanford40, split="train2")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="JPEGImages"):
        ds.list_stanford40(tmp_path / "empty")


# --- EADs ----------------------------------------------------------------------------------------------

def test_eads_class_folders_in_st_i2v_order(tmp_path):
    root = tmp_path / "EADs"
    for c in ds.EAD_CLASSES:
        touch(root, f"{c}/001.jpg")
    touch(root, "clap/applauding_136.jpg", "run/running_001.JPG")
    items, skipped = ds.list_eads(root)
    assert skipped == []
    assert len(items) == 15
    by_id = {it.id: it for it in items}
    assert by_id["hug/001.jpg"].label == 0
    assert by_id["clap/applauding_136.jpg"].label == 5
    assert by_id["run/running_001.JPG"].label == 12  # upper-case extension is an image too


def test_eads_under_ead_image_dataset_folder(tmp_path):
    touch(tmp_path, "EAD_image_dataset/hug/003.jpg", "EAD_image_dataset/kick/004.jpg")
    items, skipped = ds.list_eads(tmp_path, ["hug", "kick"])
    assert ids(items) == ["hug/003.jpg", "kick/004.jpg"]
    assert skipped == []


# --- BU101 ---------------------------------------------------------------------------------------------

def test_bu101_class_folders(tmp_path):
    touch(tmp_path, "ApplyEyeMakeup/0001.jpg", "YoYo/img 2.png", "Archery/a.jpg")
    items, skipped = ds.list_bu101(tmp_path)
    assert [(it.id, it.label) for it in items] == [
        ("ApplyEyeMakeup/0001.jpg", 0), ("Archery/a.jpg", 2), ("YoYo/img 2.png", 100)]
    assert len(reasons(skipped, ds.SKIP_NO_FILES)) == 98


def test_bu101_flat_images_folder_class_is_file_prefix(tmp_path):
    touch(tmp_path, "images/Biking_1.png", "images/Biking_101.jpg", "images/apply_eye_makeup_7.jpg",
          "images/Unknownclass_3.jpg", "images/noprefix.jpg", "Readme.txt")
    items, skipped = ds.list_bu101(tmp_path, {"ApplyEyeMakeup": "ApplyEyeMakeup", "Biking": "Biking"})
    assert [(it.id, it.class_name) for it in items] == [
        ("Biking_1.png", "Biking"), ("Biking_101.jpg", "Biking"), ("apply_eye_makeup_7.jpg", "ApplyEyeMakeup")]
    assert reasons(skipped, ds.SKIP_NOT_IN_MAP) == ["Unknownclass_3.jpg"]
    assert reasons(skipped, ds.SKIP_NO_CLASS_IN_NAME) == ["noprefix.jpg"]


# --- HMDB51 --------------------------------------------------------------------------------------------

@pytest.fixture
def hmdb51(tmp_path):
    root = tmp_path / "hmdb51"
    touch(root, "hug/a_hug_1.avi", "hug/b_hug_2.avi", "hug/c_hug_3.avi",
          "clap/#20_Rhythm_clap_u_nm_np1_le_goo_4.avi", "clap/d_clap_1.avi",
          "brush_hair/x_brush_hair_1.avi")
    s = root / ds.HMDB51_SPLITS_DIR
    write(s / "hug_test_split1.txt", "a_hug_1.avi 1 \nb_hug_2.avi 2 \nc_hug_3.avi 0 \n")
    write(s / "clap_test_split1.txt", "#20_Rhythm_clap_u_nm_np1_le_goo_4.avi 2 \nd_clap_1.avi 1 \n")
    write(s / "hug_test_split2.txt", "a_hug_1.avi 2\nb_hug_2.avi 1\nc_hug_3.avi 1\n")
    write(s / "clap_test_split2.txt", "#20_Rhythm_clap_u_nm_np1_le_goo_4.avi 1\nd_clap_1.avi 1\n")
    return root


def test_hmdb51_all_videos_of_mapped_classes(hmdb51):
    items, skipped = ds.list_hmdb51(hmdb51, ["hug", "clap"])
    assert ids(items) == ["clap/#20_Rhythm_clap_u_nm_np1_le_goo_4.avi", "clap/d_clap_1.avi",
                          "hug/a_hug_1.avi", "hug/b_hug_2.avi", "hug/c_hug_3.avi"]
    assert {it.class_name: it.label for it in items} == {"hug": 0, "clap": 1}
    assert reasons(skipped, ds.SKIP_NOT_IN_MAP) == ["brush_hair"]
    assert not any(ds.HMDB51_SPLITS_DIR in s["path"] for s in skipped)


def test_hmdb51_official_splits(hmdb51):
    train1, _ = ds.list_hmdb51(hmdb51, ["hug", "clap"], split="train1")
    test1, _ = ds.list_hmdb51(hmdb51, ["hug", "clap"], split="test1")
    assert ids(train1) == ["clap/d_clap_1.avi", "hug/a_hug_1.avi"]
    assert ids(test1) == ["clap/#20_Rhythm_clap_u_nm_np1_le_goo_4.avi", "hug/b_hug_2.avi"]
    train2, _ = ds.list_hmdb51(hmdb51, ["hug", "clap"], split="train2")
    assert len(train2) == 4
    assert ids(ds.list_hmdb51(hmdb51, ["hug", "clap"], split="train")[0]) == ids(train1)


def test_hmdb51_split_problems_are_reported(hmdb51):
    (hmdb51 / "hug" / "a_hug_1.avi").unlink()
    touch(hmdb51, "hug/new_video.avi")
    items, skipped = ds.list_hmdb51(hmdb51, ["hug", "climb"], split="train1")
    assert items == []
    assert reasons(skipped, ds.SKIP_LISTED_MISSING) == ["a_hug_1.avi"]
    assert reasons(skipped, ds.SKIP_NOT_IN_SPLIT) == ["new_video.avi"]
    assert reasons(skipped, ds.SKIP_SPLIT_FILE_MISSING) == ["climb_test_split1.txt"]
    assert reasons(skipped, ds.SKIP_NO_FILES) == ["climb"]


def test_hmdb51_bad_split_line_names_the_file(hmdb51):
    write(hmdb51 / ds.HMDB51_SPLITS_DIR / "hug_test_split3.txt", "a_hug_1.avi 7\n")
    with pytest.raises(ValueError, match="hug_test_split3.txt"):
        ds.list_hmdb51(hmdb51, ["hug"], split="test3")


# --- UCF101 --------------------------------------------------------------------------------------------

@pytest.fixture
def ucf101(tmp_path):
    root = tmp_path / "UCF101"
    touch(root / "UCF-101", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
          "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
          "HandstandPushups/v_HandStandPushups_g01_c01.avi", "HandstandPushups/v_HandStandPushups_g08_c01.avi",
          "YoYo/v_YoYo_g01_c01.avi", "YoYo/v_YoYo_g25_c05.avi")
    lists = root / ds.UCF101_LISTS_DIR
    write(lists / "classInd.txt", "".join(f"{i + 1} {c}\r\n" for i, c in enumerate(ds.UCF101_CLASSES)))
    write(lists / "trainlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\n"
                                     "HandstandPushups/v_HandStandPushups_g08_c01.avi 37\n"
                                     "YoYo/v_YoYo_g25_c05.avi 101\n")
    write(lists / "testlist01.txt", "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\n"
                                    "HandstandPushups/v_HandStandPushups_g01_c01.avi\n"
                                    "YoYo/v_YoYo_g01_c01.avi\n")
    return root


def test_ucf101_all_with_classind_labels(ucf101):
    items, skipped = ds.list_ucf101(ucf101, ["ApplyEyeMakeup", "HandstandPushups", "YoYo"])
    assert [(it.label, it.class_name) for it in items[::2]] == [
        (0, "ApplyEyeMakeup"), (1, "HandstandPushups"), (2, "YoYo")]
    assert items[2].id == "HandstandPushups/v_HandStandPushups_g01_c01.avi"
    assert skipped == []
    full, full_skipped = ds.list_ucf101(ucf101)  # classInd order, 0-based
    assert [it.label for it in full[::2]] == [0, 36, 100]
    assert len(reasons(full_skipped, ds.SKIP_NO_FILES)) == 98


def test_ucf101_official_split(ucf101):
    train, skipped = ds.list_ucf101(ucf101, B2U.target_class_map, split="train1")
    assert ids(train) == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
                          "HandstandPushups/v_HandStandPushups_g08_c01.avi", "YoYo/v_YoYo_g25_c05.avi"]
    assert [it.label for it in train] == [0, 36, 100]
    test, _ = ds.list_ucf101(ucf101, B2U.target_class_map, split="test1")
    assert ids(test) == ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
                         "HandstandPushups/v_HandStandPushups_g01_c01.avi", "YoYo/v_YoYo_g01_c01.avi"]
    with pytest.raises(FileNotFoundError, match="trainlist02"):
        ds.list_ucf101(ucf101, split="train2")


def test_ucf101_root_may_be_the_video_folder(ucf101):
    items, _ = ds.list_ucf101(ucf101 / "UCF-101", ["YoYo"], split="test1")
    assert ids(items) == ["YoYo/v_YoYo_g01_c01.avi"]


# --- folder --------------------------------------------------------------------------------------------

def test_folder_sorted_class_names_images_and_videos(tmp_path):
    touch(tmp_path, "zebra/1.mp4", "apple/2.jpg", "apple/3.webm", "mango/4.txt")
    items, skipped = ds.list_folder(tmp_path)
    assert [(it.id, it.label, it.class_name) for it in items] == [
        ("apple/2.jpg", 0, "apple"), ("apple/3.webm", 0, "apple"), ("zebra/1.mp4", 2, "zebra")]
    assert reasons(skipped, ds.SKIP_EXTENSION) == ["4.txt"]
    assert reasons(skipped, ds.SKIP_NO_FILES) == ["mango"]
    images, _ = ds.list_folder(tmp_path, media="image")
    assert ids(images) == ["apple/2.jpg"]


def test_folder_with_class_map_and_unlabeled_files(tmp_path):
    touch(tmp_path, "b/1.jpg", "a/2.jpg", "loose.mp4")
    items, skipped = ds.list_folder(tmp_path, {"second": "b", "first": "a"}, unlabeled_files=True)
    assert [(it.id, it.label, it.class_name) for it in items] == [
        ("a/2.jpg", 1, "first"), ("b/1.jpg", 0, "second"), ("loose.mp4", -1, "")]
    _, skipped = ds.list_folder(tmp_path, ["a", "b"])
    assert reasons(skipped, ds.SKIP_OUTSIDE_CLASS) == ["loose.mp4"]


def test_folder_recursive(tmp_path):
    touch(tmp_path, "a/x/1.jpg", "a/2.jpg")
    flat, skipped = ds.list_folder(tmp_path)
    assert ids(flat) == ["a/2.jpg"] and reasons(skipped, ds.SKIP_SUBDIR) == ["x"]
    deep, _ = ds.list_folder(tmp_path, recursive=True)
    assert ids(deep) == ["a/2.jpg", "a/x/1.jpg"]


# --- what every adapter skips ----------------------------------------------------------------------------

def test_unknown_extensions_and_hidden_files_are_skipped_and_reported(tmp_path):
    touch(tmp_path, "hug/ok.jpg", "hug/notes.txt", "hug/.hidden.jpg", "hug/._ok.jpg", "hug/clip.avi",
          ".DS_Store", ".cache/hug.jpg", "kick/1.jpeg")
    items, skipped = ds.list_eads(tmp_path, ["hug", "kick"])
    assert ids(items) == ["hug/ok.jpg", "kick/1.jpeg"]
    assert reasons(skipped, ds.SKIP_EXTENSION) == ["clip.avi", "notes.txt"]
    assert reasons(skipped, ds.SKIP_HIDDEN) == [".DS_Store", "._ok.jpg", ".hidden.jpg"]
    assert reasons(skipped, ds.SKIP_HIDDEN_DIR) == [".cache"]
    assert all(set(s) == {"path", "reason"} for s in skipped)


def test_class_with_no_files_is_reported_not_fatal(tmp_path):
    touch(tmp_path, "hug/1.jpg")
    (tmp_path / "kick").mkdir()
    items, skipped = ds.list_eads(tmp_path, ["hug", "kick", "talk"])
    assert ids(items) == ["hug/1.jpg"]
    assert reasons(skipped, ds.SKIP_NO_FILES) == ["kick", "talk"]
    assert {s["reason"] for s in skipped} == {"class has no files"}


def test_file_names_with_spaces_unicode_and_bang(tmp_path):
    names = ["clap/a video with spaces.avi", "clap/Bruno_Walks_ANYTHING_to_a_dog!!!!_climb.mp4",
             "clap/vidéo_naïve_日本.avi", "clap/it's & (odd);.mkv"]
    touch(tmp_path, *names)
    items, skipped = ds.list_hmdb51(tmp_path, ["clap"])
    assert skipped == []
    assert sorted(ids(items)) == sorted(names)
    assert all(Path(it.path).is_file() for it in items)


def test_ids_are_unicode_nfc(tmp_path):
    import unicodedata
    decomposed = unicodedata.normalize("NFD", "é.jpg")
    touch(tmp_path, f"hug/{decomposed}")
    items, _ = ds.list_eads(tmp_path, ["hug"])
    assert items[0].id == "hug/" + unicodedata.normalize("NFC", "é.jpg")
    assert Path(items[0].path).exists()


def test_non_utf8_file_name_is_reported(tmp_path):
    class_dir = tmp_path / "hug"
    class_dir.mkdir()
    try:
        fd = os.open(os.path.join(os.fsencode(class_dir), b"bad\xff.jpg"), os.O_CREAT | os.O_WRONLY)
    except OSError:
        pytest.skip("file system refuses non-UTF-8 names")
    os.close(fd)
    items, skipped = ds.list_eads(tmp_path, ["hug"])
    assert items == []
    assert sorted(s["reason"] for s in skipped) == [ds.SKIP_NO_FILES, ds.SKIP_BAD_NAME]
    json.dumps(skipped)  # the report stays serialisable


def test_symlink_loops_do_not_hang(tmp_path):
    touch(tmp_path, "hug/1.jpg", "kick/2.jpg")
    (tmp_path / "hug" / "again").symlink_to(tmp_path / "hug", target_is_directory=True)
    (tmp_path / "hug" / "up").symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / "hug" / "self.jpg").symlink_to(tmp_path / "hug" / "self.jpg")
    (tmp_path / "hug" / "dangling.jpg").symlink_to(tmp_path / "nowhere.jpg")
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)
    items, skipped = ds.list_eads(tmp_path, ["hug", "kick"])
    assert ids(items) == ["hug/1.jpg", "kick/2.jpg"]
    assert reasons(skipped, ds.SKIP_BROKEN_LINK) == ["dangling.jpg", "self.jpg"]
    assert reasons(skipped, ds.SKIP_NOT_IN_MAP) == ["loop"]
    # a recursive scan where every class folder is reachable through a loop still ends
    items, skipped = ds.list_folder(tmp_path, recursive=True)
    assert "hug/1.jpg" in ids(items) and "loop/hug/1.jpg" in ids(items)
    assert "again" in reasons(skipped, ds.SKIP_SYMLINK_DIR)


def test_linked_class_folder_is_followed(tmp_path):
    touch(tmp_path, "elsewhere/hug_images/1.jpg")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "hug").symlink_to(tmp_path / "elsewhere" / "hug_images", target_is_directory=True)
    items, _ = ds.list_eads(tmp_path / "data", ["hug"])
    assert ids(items) == ["hug/1.jpg"]


def test_unreadable_directory_is_reported(tmp_path, monkeypatch):
    touch(tmp_path, "hug/1.jpg", "kick/2.jpg")
    real_scandir = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("kick"):
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(ds.os, "scandir", scandir)
    items, skipped = ds.list_eads(tmp_path, ["hug", "kick"])
    assert ids(items) == ["hug/1.jpg"]
    assert reasons(skipped, ds.SKIP_UNREADABLE) == ["kick"]
    assert reasons(skipped, ds.SKIP_NO_FILES) == ["kick"]


def test_class_map_validation():
    with pytest.raises(ValueError, match="mapped to both"):
        ds.normalize_class_map({"a": ["x"], "b": ["x", "y"]})
    with pytest.raises(ValueError, match="no dataset class"):
        ds.normalize_class_map({"a": []})
    with pytest.raises(TypeError):
        ds.normalize_class_map("hug")


def test_adapter_registry(tmp_path):
    assert set(ds.ADAPTERS) >= {"stanford40", "eads", "bu101", "hmdb51", "ucf101", "folder"}
    touch(tmp_path, "a/1.png")
    assert ids(ds.list_dataset("folder", tmp_path)[0]) == ["a/1.png"]
    with pytest.raises(KeyError, match="known"):
        ds.get_adapter("kinetics")
    with pytest.raises(ValueError, match="split"):
        ds.list_dataset("eads", tmp_path, split="train1")
    assert ds.media_kind("x/Y.MOV") == "video" and ds.media_kind("a.tiff") == "image"
    assert ds.media_kind("a.gif") is None


# --- benchmarks ------------------------------------------------------------------------------------------

def test_e2h_classes_are_st_i2v_order():
    assert E2H.classes == ["hug", "kick", "talk", "wave", "push", "clap", "kiss", "climb", "smoke", "jump",
                           "drink", "pour", "run"]
    assert E2H.num_classes == 13 and E2H.verified
    assert E2H.source_dataset == "eads" and E2H.target_dataset == "hmdb51"
    assert E2H.transductive and E2H.target_split == "all"
    assert sum(E2H.expected_target_counts.values()) == 1690
    assert sum(E2H.expected_source_counts.values()) == 3008
    assert all(c in ds.HMDB51_CLASSES for names in E2H.target_class_map.values() for c in names)
    cfb = with_class_order(E2H, E2H_CFB_CLASS_ORDER, name="E2H_CFB")
    assert cfb.classes[0] == "clap" and cfb.classes[-1] == "wave" and cfb.label_of("hug") == 3


def test_s2u_is_twelve_candidate_classes_marked_unverified():
    assert S2U.num_classes == 12 and not S2U.verified
    assert "UNVERIFIED" in S2U.note and "UNVERIFIED" in S2U.source_note
    assert S2U.classes.index("BrushingTeeth") == 2
    assert S2U.source_class_map["RockClimbingIndoor"] == ["climbing"]
    assert all(c in ds.UCF101_CLASSES for c in S2U.classes)
    assert all(s in ds.STANFORD40_CLASSES for names in S2U.source_class_map.values() for s in names)


def test_b2u_is_ucf101_classind_order():
    assert B2U.num_classes == 101 == len(set(B2U.classes))
    assert B2U.classes[0] == "ApplyEyeMakeup" and B2U.classes[1] == "ApplyLipstick"
    assert B2U.classes[2] == "Archery" and B2U.classes[-1] == "YoYo"
    assert B2U.classes[36] == "HandstandPushups" and B2U.classes[35] == "HammerThrow"
    # classInd.txt is in case-insensitive alphabetical order
    assert B2U.classes == sorted(B2U.classes, key=str.lower)


def test_paper_accuracy():
    # the training presets are pinned in tests/test_presets.py (their one home is model.trainer.PRESETS)
    assert (E2H.paper_accuracy, B2U.paper_accuracy, S2U.paper_accuracy) == (77.4, 81.1, 97.3)


def test_registry_accepts_new_benchmarks(monkeypatch):
    monkeypatch.setattr("data.benchmarks.BENCHMARKS", dict(BENCHMARKS))
    assert get_benchmark("e2h") is E2H
    toy = Benchmark(name="TOY", classes=["a", "b"], source_dataset="folder", source_class_map={"a": "a", "b": "b"},
                    target_dataset="folder", target_class_map={"a": ["a"], "b": ["b"]},
                    target_protocol="all", verified=True, source_note="test")
    register_benchmark(toy)
    register_benchmark(toy)  # the same again is fine
    assert get_benchmark("TOY") is toy
    with pytest.raises(ValueError, match="already registered"):
        register_benchmark(with_class_order(toy, ["b", "a"]))
    with pytest.raises(KeyError, match="unknown benchmark"):
        get_benchmark("NOPE")
    with pytest.raises(ValueError, match="every class"):
        Benchmark(name="BAD", classes=["a", "b"], source_dataset="folder", source_class_map={"a": "a"},
                  target_dataset="folder", target_class_map={"a": "a", "b": "b"}, target_protocol="",
                  verified=True, source_note="")


def test_list_source_and_target_items_use_benchmark_labels(tmp_path):
    eads, hmdb = tmp_path / "EADs", tmp_path / "HMDB51"
    touch(eads, "run/running_001.jpg", "hug/003.jpg", "clap/applauding_136.jpg")
    touch(hmdb, "clap/#20_Rhythm_clap_u_nm_np1_le_goo_4.avi", "run/r.avi", "climb_stairs/c.avi")
    src, src_skipped = list_source_items("E2H", eads)
    assert [(it.id, it.label) for it in src] == [
        ("clap/applauding_136.jpg", 5), ("hug/003.jpg", 0), ("run/running_001.jpg", 12)]
    assert len(reasons(src_skipped, ds.SKIP_NO_FILES)) == 10
    tgt, tgt_skipped = list_target_items(E2H, hmdb)
    assert [(it.id, it.label, it.class_name) for it in tgt] == [
        ("clap/#20_Rhythm_clap_u_nm_np1_le_goo_4.avi", 5, "clap"), ("run/r.avi", 12, "run")]
    assert reasons(tgt_skipped, ds.SKIP_NOT_IN_MAP) == ["climb_stairs"]
    assert count_mismatches(tgt, E2H.expected_target_counts)["run"] == (1, 232)


def test_s2u_source_labels_come_from_the_stanford40_map(stanford40):
    items, skipped = list_source_items(S2U, stanford40)
    assert [(it.id, it.label, it.class_name) for it in items] == [
        ("brushing_teeth_001.jpg", 2, "BrushingTeeth"), ("brushing_teeth_002.jpg", 2, "BrushingTeeth"),
        ("climbing_001.jpg", 8, "RockClimbingIndoor"), ("climbing_002.jpg", 8, "RockClimbingIndoor")]
    assert len(reasons(skipped, ds.SKIP_NO_FILES)) == 10


# --- items ---------------------------------------------------------------------------------------------

def make_items(n):
    return [Item(id=f"c{i % 3}/v{i:03d}.avi", path=f"/data/c{i % 3}/v{i:03d}.avi", label=i % 3,
                 class_name=f"c{i % 3}") for i in range(n)]


@pytest.mark.parametrize("n", [0, 1, 7, 100])
@pytest.mark.parametrize("k", [1, 2, 3, 8, 13])
def test_shard_slice_covers_every_item_once(n, k):
    items = make_items(n)
    shards = [shard_slice(items, i, k) for i in range(k)]
    flat = [it for s in shards for it in s]
    assert sorted(ids(flat)) == sorted(ids(items)) and len(flat) == n
    assert ids(flat) == sorted(ids(items))  # contiguous slices of the sorted list
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_shard_slice_is_stable_under_input_order():
    items = make_items(50)
    shuffled = items[::-1][25:] + items[::-1][:25]
    for i in range(4):
        assert shard_slice(items, i, 4) == shard_slice(shuffled, i, 4)
    assert shard_slice(items, 1, 4) == sorted(items, key=lambda it: it.id)[12:25]


def test_shard_slice_rejects_bad_arguments():
    items = make_items(5)
    for shard, k in [(-1, 2), (2, 2), (0, 0)]:
        with pytest.raises(ValueError):
            shard_slice(items, shard, k)
    with pytest.raises(ValueError, match="duplicate"):
        shard_slice(items + items[:1], 0, 1)


def test_write_read_items_round_trip(tmp_path):
    items = make_items(5) + [Item("clap/vidéo !!! 日本.avi", "/x/clap/vidéo !!! 日本.avi", -1, "")]
    meta = {"benchmark": "E2H", "split": "all", "skipped": [{"path": "/x/a.txt", "reason": "unknown extension"}]}
    path = tmp_path / "sub" / "items.json"
    write_items(path, items, meta)
    back, back_meta = read_items(path)
    assert back == sorted(items, key=lambda it: it.id)
    assert back_meta == meta
    assert [p.name for p in path.parent.iterdir()] == ["items.json"]  # no temporary left behind
    write_items(path, items[:2], {})
    assert len(read_items(path)[0]) == 2


def test_read_items_rejects_truncated_or_foreign_files(tmp_path):
    path = tmp_path / "items.json"
    write_items(path, make_items(3), {})
    doc = json.loads(path.read_text())
    doc["items"].pop()
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match="count"):
        read_items(path)
    path.write_text('{"hello": 1}')
    with pytest.raises(ValueError, match="not an item list"):
        read_items(path)
    path.write_text("{trunc")
    with pytest.raises(ValueError, match="items.json"):
        read_items(path)


# --- real file names -------------------------------------------------------------------------------------

REALDATA = Path(__file__).resolve().parents[1].parent / "shared" / "realdata"


def test_real_hmdb51_clip_names_list_through_linked_layout(tmp_path):
    videos = REALDATA / "videos"
    if not videos.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"real test data missing: {videos}")
        pytest.skip(f"real test data missing: {videos}")
    # HMDB51 names end in _<class>_<tags>_<n>; put each real clip in its class folder as a symlink
    wanted = {"drink", "jump", "talk", "climb_stairs"}
    made = []
    for clip in sorted(videos.glob("*.mp4")):
        cls = next((c for c in wanted if f"_{c}_" in clip.name), None)
        if cls is not None:
            (tmp_path / cls).mkdir(exist_ok=True)
            (tmp_path / cls / clip.name).symlink_to(clip)
            made.append(f"{cls}/{clip.name}")
    items, skipped = ds.list_hmdb51(tmp_path, sorted(wanted))
    assert skipped == []
    assert ids(items) == sorted(made) and len(items) == 4
    assert any("!!!!" in it.id for it in items)
    assert all(Path(it.path).resolve().parent == videos.resolve() for it in items)


def test_benchmark_with_domain_subfolders_uses_folder_adapter_per_domain(tmp_path):
    toy = Benchmark(name="TOY2", classes=("walk", "run"), source_subdir="source", target_subdir="target",
                    source_depth_subdir="source_depth")
    assert toy.classes == ["walk", "run"] and toy.source_class_map == {"walk": ["walk"], "run": ["run"]}
    touch(tmp_path, "source/run/run_0000.png", "source/walk/walk_0000.png", "source_depth/run/run_0000.png",
          "target/walk/walk_0000.avi", "target/walk/walk_0000.png", "classes.txt")
    src, _ = list_source_items(toy, tmp_path)
    assert [(it.id, it.label) for it in src] == [("run/run_0000.png", 1), ("walk/walk_0000.png", 0)]
    tgt, skipped = list_target_items(toy, tmp_path)
    assert ids(tgt) == ["walk/walk_0000.avi"]  # the target domain takes videos only
    assert reasons(skipped, ds.SKIP_EXTENSION) == ["walk_0000.png"]


def test_syn_registers_itself_on_first_request():
    pytest.importorskip("data.syn")
    syn = get_benchmark("SYN")
    assert syn.name == "SYN" and syn.source_dataset == "folder" and syn.num_classes >= 2
