"""data.matlab: v7.3 writer (header, layout, axes), one reader for v7.3 and v5, lazy variables, errors."""
import h5py
import numpy as np
import pytest
import scipy.io

from data import matlab as M
from data.formats import FormatError


def _kspace(shape=(3, 2, 3, 16, 24), seed=0, dtype=np.complex64):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)


def _variables():
    rng = np.random.default_rng(1)
    return {
        "kspace_full": _kspace(),
        "kspace_double": _kspace(seed=2, dtype=np.complex128),
        "mask04": (rng.random((16, 24)) > 0.5).astype(np.float64),
        "flags": rng.random((4, 5)) > 0.5,
        "img": rng.random((2, 3, 4)).astype(np.float32),
        "counts": np.arange(6, dtype=np.int16).reshape(2, 3),
        "vec": np.arange(5.0),
        "scalar": np.float64(3.5),
    }


def test_v73_roundtrip_h5py_and_read_mat(tmp_path):
    path = tmp_path / "cine_sax.mat"
    variables = _variables()
    M.write_mat73(path, variables)
    assert not list(tmp_path.glob(".*.tmp"))
    with h5py.File(path, "r") as f:  # what every h5py-based reader (and the challenge's loadFun.py) sees
        assert f.userblock_size == 512
        ks = f["kspace_full"]
        assert ks.shape == (3, 2, 3, 16, 24) and ks.dtype.names == ("real", "imag")
        assert ks.dtype["real"] == np.float32 and ks.attrs["MATLAB_class"] == b"single"
        raw = ks[()]
        np.testing.assert_array_equal(raw["real"] + 1j * raw["imag"], variables["kspace_full"])
        assert f["kspace_double"].dtype["real"] == np.float64 and f["kspace_double"].attrs["MATLAB_class"] == b"double"
        assert f["flags"].dtype == np.uint8 and f["flags"].attrs["MATLAB_class"] == b"logical"
        assert f["flags"].attrs["MATLAB_int_decode"] == 1
        assert f["counts"].attrs["MATLAB_class"] == b"int16"
        assert f["vec"].shape == (5, 1) and f["scalar"].shape == (1, 1)  # MATLAB row 1x5, 1x1
    back = M.read_mat(path)
    assert set(back) == set(variables)
    np.testing.assert_array_equal(back["kspace_full"], variables["kspace_full"])
    assert back["kspace_full"].dtype == np.complex64
    assert back["kspace_double"].dtype == np.complex64  # default: complex64 whatever the precision
    np.testing.assert_allclose(back["kspace_double"], variables["kspace_double"], rtol=1e-6)
    for key in ("mask04", "flags", "img", "counts"):
        np.testing.assert_array_equal(back[key], variables[key])
        assert back[key].dtype == variables[key].dtype
    np.testing.assert_array_equal(back["vec"], variables["vec"].reshape(5, 1))
    assert back["scalar"].shape == (1, 1) and back["scalar"][0, 0] == 3.5
    full = M.read_mat(path, ["kspace_double"], complex_dtype=None)
    assert list(full) == ["kspace_double"] and full["kspace_double"].dtype == np.complex128
    np.testing.assert_array_equal(full["kspace_double"], variables["kspace_double"])


def test_header_bytes(tmp_path):
    path = tmp_path / "a.mat"
    M.write_mat73(path, {"x": np.ones((2, 2))})
    head = path.read_bytes()[:512]
    text = head[:116].decode("ascii")
    assert text.startswith("MATLAB 7.3 MAT-file, Platform: ") and ", Created on: " in text
    assert text.rstrip(" ").endswith("HDF5 schema 1.00 .")
    assert head[116:124] == b"\x00" * 8  # no subsystem data
    assert head[124:126] == b"\x00\x02" and head[126:128] == b"IM"  # version 0x0200, little-endian 'MI'
    assert head[128:] == b"\x00" * 384
    assert path.read_bytes()[512:520] == b"\x89HDF\r\n\x1a\n"  # HDF5 superblock right after the user block
    assert M.mat_version(path) == "7.3"


def test_v5_reads_like_v73(tmp_path):
    """The same data saved by scipy (v5, MATLAB order) and by us (v7.3) gives identical arrays."""
    variables = _variables()
    matlab_order = {k: (np.asarray(v).T if np.ndim(v) > 1 else v) for k, v in variables.items()}
    p5, p73 = tmp_path / "v5.mat", tmp_path / "v73.mat"
    scipy.io.savemat(p5, matlab_order)  # 1-d -> MATLAB row, as write_mat73 does
    M.write_mat73(p73, variables)
    assert M.mat_version(p5) == "5"
    a, b = M.read_mat(p5), M.read_mat(p73)
    assert set(a) == set(b)
    for key in a:
        assert a[key].shape == b[key].shape, key
        assert a[key].dtype == b[key].dtype, key
        np.testing.assert_array_equal(a[key], b[key])
    assert a["kspace_full"].shape == (3, 2, 3, 16, 24) and a["flags"].dtype == bool
    assert M.read_mat(p5, ["kspace_double"], complex_dtype=None)["kspace_double"].dtype == np.complex128
    assert M.mat_variables(p5)["kspace_full"] == ((3, 2, 3, 16, 24), np.dtype(np.complex64))
    assert M.mat_variables(p73)["kspace_full"] == ((3, 2, 3, 16, 24), np.dtype(np.complex64))


def test_char_and_empty(tmp_path):
    path = tmp_path / "c.mat"
    M.write_mat73(path, {"name": "P001", "nothing": np.zeros((0, 3))})
    with h5py.File(path, "r") as f:
        assert f["name"].attrs["MATLAB_class"] == b"char" and f["name"].dtype == np.uint16
        assert f["nothing"].attrs["MATLAB_empty"] == 1
    back = M.read_mat(path)
    assert back["name"] == "P001" and back["nothing"].shape == (0, 3)
    with M.open_mat_variable(path, "name") as var:
        assert var.read() == "P001"


def test_lazy_variable(tmp_path):
    path = tmp_path / "k.mat"
    k = _kspace()
    M.write_mat73(path, {"kspace_full": k}, compression=1)
    with M.open_mat_variable(path, "kspace_full") as var:
        assert var.shape == k.shape and var.dtype == np.complex64 and len(var) == 3 and var.ndim == 5
        assert var.compressed and var.nbytes == k.nbytes and 0 < var.storage_bytes
        frame = var[1]
        assert frame.dtype == np.complex64 and frame.shape == k.shape[1:]
        np.testing.assert_array_equal(frame, k[1])
        np.testing.assert_array_equal(var[:, 1, 2], k[:, 1, 2])
        np.testing.assert_array_equal(var.read(), k)
    with pytest.raises(ValueError, match="closed"):
        var[0]
    p5 = tmp_path / "k5.mat"
    scipy.io.savemat(p5, {"kspace_full": k.T})
    with M.open_mat_variable(p5, "kspace_full") as var:
        assert var.shape == k.shape and var.dtype == np.complex64 and var.storage_bytes is None
        np.testing.assert_array_equal(var[2], k[2])
    with M.open_mat_variable(path, "kspace_full", complex_dtype=None) as var:
        assert var.dtype == np.complex64 and var[0].dtype == np.complex64  # single stays single


def test_atomic_write_and_bad_names(tmp_path):
    with pytest.raises(ValueError, match="MATLAB variable name"):
        M.write_mat73(tmp_path / "x.mat", {"1bad": np.ones(2)})
    with pytest.raises(ValueError, match="no MATLAB class"):
        M.write_mat73(tmp_path / "x.mat", {"obj": np.array([object()])})
    assert not list(tmp_path.iterdir())


def _one_line_error(path, *args, **kwargs) -> str:
    with pytest.raises(FormatError) as info:
        M.read_mat(path, *args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path) + ": "), message
    return message[len(str(path)) + 2:]  # "<key>: <problem>", without the file name


def test_errors_are_one_line(tmp_path):
    good = tmp_path / "good.mat"
    M.write_mat73(good, {"kspace_full": _kspace()})
    data = good.read_bytes()

    assert "missing variable" in _one_line_error(good, ["kspace_sub04"])
    assert "kspace_sub04" in _one_line_error(good, ["kspace_sub04"])

    truncated = tmp_path / "truncated.mat"
    truncated.write_bytes(data[: len(data) // 2])
    assert "truncated" in _one_line_error(truncated)

    header_only = tmp_path / "header_only.mat"
    header_only.write_bytes(data[:512])
    assert "truncated or corrupt" in _one_line_error(header_only)

    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    assert "not a MATLAB MAT-file" in _one_line_error(garbage)

    short = tmp_path / "short.mat"
    short.write_bytes(b"MATLAB 5.0")
    assert "128-byte header" in _one_line_error(short)

    v4 = tmp_path / "v4.mat"
    scipy.io.savemat(v4, {"x": np.ones((3, 4))}, format="4")
    assert "MATLAB v4 MAT-file is not supported" in _one_line_error(v4)

    v5 = tmp_path / "v5.mat"
    scipy.io.savemat(v5, {"x": np.ones((30, 40))})
    cut = tmp_path / "v5_cut.mat"
    cut.write_bytes(v5.read_bytes()[:300])
    assert "truncated" in _one_line_error(cut)
    assert "missing variable" in _one_line_error(v5, ["y"])

    struct = tmp_path / "struct.mat"
    scipy.io.savemat(struct, {"s": {"a": 1.0}})
    assert "unsupported MATLAB class" in _one_line_error(struct)

    assert "file not found" in _one_line_error(tmp_path / "absent.mat")
    with pytest.raises(FormatError, match="missing variable"):
        M.open_mat_variable(good, "nope")


def test_declared_size_refused_before_reading(tmp_path):
    """An 'HDF5 bomb': a tiny file declaring a huge array (chunks never written) is refused."""
    bomb = tmp_path / "bomb.mat"
    with h5py.File(bomb, "w") as f:
        ds = f.create_dataset("kspace_full", shape=(10**4, 10**4, 10**3), dtype=np.float32, chunks=(1, 100, 100))
        ds.attrs["MATLAB_class"] = np.bytes_("single")
    assert bomb.stat().st_size < 10**5
    assert "exceeds" in _one_line_error(bomb)
    with M.open_mat_variable(bomb, "kspace_full") as var:
        assert var.nbytes == 4 * 10**11 and var.storage_bytes == 0
