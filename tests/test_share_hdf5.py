"""The HDF5 content policy, one test per rule: a shard that could make the importing machine read another
file, follow a link or load a plugin is rejected, even with a manifest that matches its bytes."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline import share
from pipeline.share import errors, hdf5
from tests.pipeline_helpers import reset_config
from tests.test_share_support import (built_bundles, copy_tree, rejected, entry_of, fresh_destination, listing, load_manifest,
                                      rehash, save_manifest)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return built_bundles(tmp_path_factory)


@pytest.fixture(autouse=True)
def _reset_config():
    yield
    reset_config()


def outside_file(tmp_path):
    """A file outside the bundle that a malicious shard would read: 6 int64 labels of 99."""
    path = tmp_path / "outside.bin"
    path.write_bytes(np.full(6, 99, np.int64).tobytes())
    return path


def _external_storage(f, tmp_path):
    del f["labels"]
    f.create_dataset("labels", shape=(6,), dtype=np.int64, external=[(str(outside_file(tmp_path)), 0, 48)])


def _virtual_dataset(f, tmp_path):
    src = tmp_path / "outside.h5"
    with h5py.File(src, "w") as g:
        g["n"] = np.full(6, 99, np.int64)
    layout = h5py.VirtualLayout(shape=(6,), dtype=np.int64)
    layout[:] = h5py.VirtualSource(str(src), "n", shape=(6,))
    del f["num_frames"]
    f.create_virtual_dataset("num_frames", layout)


def _reference_attribute(f, tmp_path):
    f["items/0000000"].attrs["ref"] = f["labels"].ref


def _region_reference(f, tmp_path):
    f.create_dataset("items/0000000/region", data=[f["labels"].regionref[0:2]], dtype=h5py.regionref_dtype)


def _compound_with_reference(f, tmp_path):
    dt = np.dtype([("n", np.int64), ("r", h5py.ref_dtype)])
    f.create_dataset("items/0000000/pair", data=np.array([(1, f["labels"].ref)], dtype=dt))


def _compound_attribute(f, tmp_path):
    f.attrs["pair"] = np.array([(1, 2.0)], dtype=[("a", np.int64), ("b", np.float64)])


def _vlen_of_references(f, tmp_path):
    ds = f.create_dataset("items/0000000/refs", shape=(1,), dtype=h5py.vlen_dtype(h5py.ref_dtype))
    ds[0] = np.array([f["labels"].ref], dtype=h5py.ref_dtype)


def _soft_link(f, tmp_path):
    f["items/alias"] = h5py.SoftLink("/labels")


def _external_link(f, tmp_path):
    f["items/leak"] = h5py.ExternalLink(str(tmp_path / "outside.h5"), "/")


def _extra_hard_link(f, tmp_path):
    f["items/0000000/again"] = f["labels"]


def _gzip_filter(f, tmp_path):
    f.create_dataset("items/0000000/packed", data=np.arange(100), chunks=(10,), compression="gzip")


def _enum_dtype(f, tmp_path):
    f.create_dataset("items/0000000/flags", data=np.array([True, False]))  # h5py stores bool as an enum


def _opaque_dtype(f, tmp_path):
    f.create_dataset("items/0000000/blob", data=np.void(b"\x01\x02\x03\x04"))


def _named_datatype(f, tmp_path):
    f["items/kind"] = np.dtype("int64")


RULES = {
    "external raw storage": (_external_storage, r"HDF5 dataset /labels keeps its data in external files"),
    "virtual dataset": (_virtual_dataset, r"HDF5 dataset /num_frames is a virtual dataset \(it reads other files\)"),
    "object reference in an attribute": (_reference_attribute, r"attribute 'ref' of /items/0000000 holds object or "
                                                               r"region references"),
    "region references": (_region_reference, r"/items/0000000/region holds object or region references"),
    "compound type with a reference field": (_compound_with_reference, r"/items/0000000/pair holds a compound type"),
    "compound attribute": (_compound_attribute, r"attribute 'pair' of / holds a compound type"),
    "vlen of references": (_vlen_of_references, r"/items/0000000/refs holds variable-length sequences of object or "
                                                r"region references"),
    "soft link": (_soft_link, r"HDF5 SoftLink at /items/alias is not allowed"),
    "external link": (_external_link, r"HDF5 ExternalLink at /items/leak is not allowed"),
    "extra hard link": (_extra_hard_link, r"HDF5 object /items/0000000/again is reached by 2 hard links"),
    "a filter other than fletcher32": (_gzip_filter, r"/items/0000000/packed uses the filter deflate \(1\); only "
                                                     r"fletcher32 is allowed"),
    "a dtype the store does not write (enum)": (_enum_dtype, r"/items/0000000/flags holds an enum type"),
    "a dtype the store does not write (opaque)": (_opaque_dtype, r"/items/0000000/blob holds an opaque type"),
    "named datatype": (_named_datatype, r"HDF5 named datatype at /items/kind is not allowed"),
}


def tampered_bundle(built, tmp_path, tamper):
    bundle = copy_tree(built / "bundle", tmp_path / "bundle")
    manifest = load_manifest(bundle)
    entry = entry_of(manifest, "ExtractFlow", ".h5")
    with h5py.File(bundle / entry["path"], "a") as f:
        tamper(f, tmp_path)
    rehash(bundle, entry)  # the manifest matches the bytes: only the policy can stop it
    save_manifest(bundle, manifest)
    return bundle


@pytest.mark.parametrize("rule", list(RULES))
def test_a_shard_outside_the_hdf5_policy_is_rejected(built, tmp_path, rule):
    tamper, message = RULES[rule]
    bundle = tampered_bundle(built, tmp_path, tamper)
    dest = fresh_destination(tmp_path)
    before = listing(dest)
    with pytest.raises(share.BundleError, match=message) as err:
        share.import_bundle(bundle)
    assert err.value.code == errors.EXIT_UNSAFE
    assert listing(dest) == before


def test_the_stores_own_shards_and_fletcher32_checksums_are_allowed(built, tmp_path):
    for path in (built / "bundle").rglob("*.h5"):
        assert hdf5.policy_problems(path) == []

    def checksummed(f, tmp_path):
        f.create_dataset("items/0000000/checked", data=np.arange(100, dtype=np.float32), chunks=(10,),
                         fletcher32=True)

    bundle = tampered_bundle(built, tmp_path, checksummed)
    fresh_destination(tmp_path)
    assert {f.state for f in share.import_bundle(bundle)} == {"new"}


def test_payload_checksum_problems_reject_the_bundle(built, tmp_path, monkeypatch):
    """The call point where data.store's payload checksum check plugs in: what it reports rejects the bundle."""
    monkeypatch.setattr(hdf5, "_payload_problems", lambda path: ["payload checksum mismatch in /items/0000000/flow"])
    fresh_destination(tmp_path)
    with pytest.raises(share.BundleError, match=r"shard-0000-of-0001\.h5: payload checksum mismatch") as err:
        share.import_bundle(built / "bundle")
    assert err.value.code == errors.EXIT_DAMAGED


def _damaged_link_info(path):
    """A file h5py wrote, with the byte that makes reading a link's info fail inside the link visit: h5py
    turns an exception in that callback into a SystemError (found by tests/test_share_fuzz.py)."""
    with h5py.File(path, "w") as f:
        f.create_group("items")["0000000"] = np.arange(3)
        f["labels"] = np.arange(3)
    data = bytearray(path.read_bytes())
    data[24] ^= 0x3B  # the superblock's base address
    path.write_bytes(bytes(data))
    return path


def test_a_shard_whose_links_cannot_be_read_is_damaged_not_an_internal_error(built, tmp_path):
    with pytest.raises(Exception) as raised:
        hdf5.policy_problems(_damaged_link_info(tmp_path / "x.h5"))
    assert not isinstance(raised.value, SystemError)

    def damaged(f, tmp_path):
        pass

    bundle = tampered_bundle(built, tmp_path, damaged)
    manifest = load_manifest(bundle)
    entry = entry_of(manifest, "ExtractFlow", ".h5")
    data = bytearray((bundle / entry["path"]).read_bytes())
    data[24] ^= 0x3B
    (bundle / entry["path"]).write_bytes(bytes(data))
    rehash(bundle, entry)
    save_manifest(bundle, manifest)
    err = rejected(bundle, tmp_path, r"shard-0000-of-0001\.h5: not a complete HDF5 store file", errors.EXIT_DAMAGED)
    assert "SystemError" not in str(err)
