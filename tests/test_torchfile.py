"""fastconv.models.torchfile: torch.save archives and safetensors files read without their frameworks.

Oracles: torch.load(path, weights_only=True) for files torch.save wrote, compared
bit for bit after conversion to NumPy (bfloat16 as float32); the safetensors
package for safetensors files. Hostile and damaged files are written here, by
hand (a small pickle assembler and zip writer below): each must raise a
one-line ValueError naming the file, never run anything (the payloads create
a marker file under plain pickle, which is checked too) and never crash.
"""
import json
import pickle
import re
import shlex
import struct
import sys
import tracemalloc
import zipfile
from collections import OrderedDict

import numpy as np
import pytest

from fastconv.models.torchfile import read_safetensors, read_torch, write_safetensors
from fastconv.models.weights import read_weights

# --------------------------------------------------------------------------- comparing


def torch_as_numpy(torch, value):
    """What torch.load gave, with tensors as NumPy arrays (bfloat16 and float16 as read_torch gives them)."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        return (value.float() if value.dtype == torch.bfloat16 else value).numpy()
    if isinstance(value, dict):
        return {key: torch_as_numpy(torch, item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(torch_as_numpy(torch, item) for item in value)
    return value


def same(ours, theirs):
    """Bit for bit: arrays of the same dtype, shape and bytes; containers of the same
    kind, keys and order; everything else equal and of the same type."""
    if isinstance(theirs, np.ndarray):
        return (isinstance(ours, np.ndarray) and ours.dtype == theirs.dtype and ours.shape == theirs.shape
                and ours.tobytes() == theirs.tobytes())
    if isinstance(theirs, dict):
        return (isinstance(ours, dict) and list(ours) == list(theirs)
                and all(same(ours[key], theirs[key]) for key in theirs))
    if isinstance(theirs, (list, tuple)):
        return (type(ours) is type(theirs) and len(ours) == len(theirs)
                and all(same(a, b) for a, b in zip(ours, theirs)))
    return type(ours) is type(theirs) and ours == theirs


def arrays_in(value):
    if isinstance(value, np.ndarray):
        return [value]
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, (list, tuple)):
        return [array for item in value for array in arrays_in(item)]
    return []


def assert_own_memory(result):
    """Every array is C-contiguous and writeable, and no two share memory."""
    arrays = arrays_in(result)
    assert all(a.flags.c_contiguous and a.flags.writeable for a in arrays)
    for i, a in enumerate(arrays):
        for b in arrays[i + 1:]:
            assert a.size == 0 or b.size == 0 or not np.shares_memory(a, b)


def one_line_error(error, path):
    message = str(error.value)
    assert "\n" not in message and str(path) in message, message
    return message


# --------------------------------------------------------------------------- files written by torch.save


def every_kind_of_tensor(torch):
    """A state dict of small modules (BatchNorm's num_batches_tracked included) and
    one tensor of every dtype and layout the reader must rebuild."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 4 * 4, 5))
    net(torch.randn(2, 3, 6, 6))  # training mode: the batch norm's statistics and counter move
    state = net.state_dict()
    base = torch.randn(4, 6, dtype=torch.float64)
    state.update({
        "float64": torch.randn(3, 4, dtype=torch.float64),
        "float16": torch.randn(5).half(),
        "bfloat16": torch.randn(2, 3).to(torch.bfloat16),
        "int64": torch.randint(-2**40, 2**40, (4,)),
        "int32": torch.randint(-1000, 1000, (7,), dtype=torch.int32),
        "int16": torch.randint(-1000, 1000, (3,), dtype=torch.int16),
        "int8": torch.randint(-128, 128, (6,), dtype=torch.int8),
        "uint8": torch.randint(0, 256, (6,), dtype=torch.uint8),
        "bool": torch.rand(9) > 0.5,
        "transposed": torch.randn(3, 5).t(),
        "offset_view": torch.arange(10.0)[3:7],
        "strided_view": base[1:, ::2],
        "shared_whole": base,
        "shared_row": base[2],
        "empty": torch.empty(0, 3),
        "scalar": torch.tensor(2.5),
        "expanded": torch.arange(3.0).expand(4, 3),
        "non_finite": torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0]),
    })
    return state


def test_state_dict_matches_torch_bit_for_bit(torch, tmp_path):
    state = every_kind_of_tensor(torch)
    path = tmp_path / "state.pth"
    torch.save(state, path)
    ours = read_torch(path)
    theirs = torch_as_numpy(torch, torch.load(path, weights_only=True))
    assert same(ours, theirs)
    assert isinstance(ours, OrderedDict) and ours["1.num_batches_tracked"].dtype == np.int64
    assert ours["1.num_batches_tracked"] == 1 and ours["bfloat16"].dtype == np.float32
    assert ours["scalar"].shape == () and ours["empty"].shape == (0, 3)
    assert_own_memory(ours)  # the shared storage gave two arrays of their own


def test_checkpoint_dict_with_python_values(torch, tmp_path):
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.Adam(net.parameters())
    net(torch.randn(4, 3)).sum().backward()
    optimizer.step()
    checkpoint = {"state_dict": net.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 3, "best": 0.91,
                  "name": "run", "history": [1.5, 2.5], "pair": (1, "a"), "none": None, "flag": True,
                  "raw": b"\x00\xff", "tags": {"a", "b"}, "big": 2**70, "nested": {"a": [{"b": (1.0,)}]}}
    path = tmp_path / "checkpoint.pt"
    torch.save(checkpoint, path)
    ours = read_torch(path)
    assert same(ours, torch_as_numpy(torch, torch.load(path, weights_only=True)))
    assert ours["optimizer"]["state"][0]["exp_avg"].shape == (2, 3)  # int keys, as the optimizer wrote them
    weights = read_weights(path)  # the reader of fastconv.models.weights finds the state dict inside
    assert list(weights.tensors) == ["weight", "bias"]
    assert np.array_equal(weights.tensors["weight"], net.weight.detach().numpy())


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
def test_every_pickle_protocol(torch, tmp_path, protocol):
    value = {"w": torch.randn(2, 3), "b": b"bytes", "s": {1, 2}, "c": 1 + 2j, "a": bytearray(b"xy")}
    path = tmp_path / "p.pth"
    torch.save(value, path, pickle_protocol=protocol)
    # torch's weights-only reader knows protocol 2's instructions only; the file is this
    # test's own, so torch's full unpickler serves as the oracle for the others.
    theirs = torch.load(path, weights_only=protocol == 2)
    assert same(read_torch(path), torch_as_numpy(torch, theirs))


def test_parameters_with_and_without_attributes(torch, tmp_path):
    plain = torch.nn.Parameter(torch.randn(3))
    with_state = torch.nn.Parameter(torch.randn(2, 2))
    with_state.note = "an attribute, pickled as the parameter's state"
    path = tmp_path / "parameters.pth"
    torch.save({"plain": plain, "with_state": with_state}, path)
    assert same(read_torch(path), torch_as_numpy(torch, torch.load(path, weights_only=True)))
    assert b"_rebuild_parameter_with_state" in zipfile.ZipFile(path).read("parameters/data.pkl")


def test_big_endian_storages_are_swapped(torch, tmp_path):
    value = {"f32": torch.randn(3), "f64": torch.randn(2, dtype=torch.float64), "i16": torch.arange(-2, 2).short(),
             "bf16": torch.randn(4).to(torch.bfloat16), "i64": torch.arange(3), "f16": torch.randn(3).half()}
    little = tmp_path / "little.pth"
    torch.save(value, little)
    big = tmp_path / "big.pth"
    with zipfile.ZipFile(little) as source, zipfile.ZipFile(big, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name.endswith("/byteorder"):
                data = b"big"
            elif "/data/" in name:  # the storages, numbered in the order of the dict
                itemsize = list(value.values())[int(name.rsplit("/", 1)[1])].element_size()
                data = np.frombuffer(data, f"<u{itemsize}").byteswap().tobytes()
            target.writestr(name.replace("little/", "big/"), data)
    ours = read_torch(big)
    assert same(ours, torch_as_numpy(torch, torch.load(big, weights_only=True)))
    assert same(ours, torch_as_numpy(torch, value))


def test_a_file_saved_without_crcs(torch, tmp_path):
    path = tmp_path / "no_crc.pth"
    torch.serialization.set_crc32_options(False)
    try:
        torch.save({"w": torch.randn(5)}, path)
    finally:
        torch.serialization.set_crc32_options(True)
    assert zipfile.ZipFile(path).getinfo("no_crc/data/0").CRC == 0
    assert same(read_torch(path), torch_as_numpy(torch, torch.load(path, weights_only=True)))


def test_read_weights_needs_no_torch(torch, tmp_path, monkeypatch):
    state = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2)).state_dict()
    torch.save(state, tmp_path / "w.pth")
    monkeypatch.setitem(sys.modules, "torch", None)  # any import of torch now fails
    with pytest.raises(ImportError):
        import torch as _  # noqa: F401
    weights = read_weights(tmp_path / "w.pth")
    assert [group.name for group in weights.groups] == ["0", "1"]
    assert all(np.array_equal(weights.tensors[key], value.numpy()) for key, value in state.items())


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
@pytest.mark.parametrize("kind", ["legacy", "torchscript", "whole_module"])
def test_files_torch_writes_that_are_refused(torch, tmp_path, kind):
    path = tmp_path / f"{kind}.pt"
    module = torch.nn.Linear(2, 2)
    if kind == "legacy":
        torch.save(module.state_dict(), path, _use_new_zipfile_serialization=False)
    elif kind == "torchscript":
        torch.jit.save(torch.jit.script(module), path)
    else:
        torch.save(module, path)
    with pytest.raises(ValueError) as error:
        read_torch(path)
    message = one_line_error(error, path)
    expected = {"legacy": r"legacy format .*torch\.save\(torch\.load\(",
                "torchscript": r"TorchScript archive .*torch\.jit\.load\(",
                "whole_module": r"holds torch\.nn\.modules\.linear\.Linear, which fastconv does not unpickle"}
    assert re.search(expected[kind], message), message


# --------------------------------------------------------------------------- hand-made files
# A small assembler of protocol-2 pickles, in the form torch.save writes them.

MARK, TUPLE, REDUCE, STOP, BINPERSID = b"(", b"t", b"R", b".", b"Q"
SETITEM, EMPTY_DICT, EMPTY_LIST, APPENDS = b"s", b"}", b"]", b"e"


def data(value):
    """The instructions that push a plain value (pickle's own, without its header and STOP)."""
    return pickle.dumps(value, protocol=2)[2:-1]


def global_(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def call(function, *args):
    return function + MARK + b"".join(args) + TUPLE + REDUCE


def storage(key, numel, kind="FloatStorage"):
    return MARK + data("storage") + global_("torch", kind) + data(key) + data("cpu") + data(numel) + TUPLE + BINPERSID


def tensor(storage_ops, offset, size, stride, *extra):
    return call(global_("torch._utils", "_rebuild_tensor_v2"), storage_ops, data(offset), data(tuple(size)),
                data(tuple(stride)), data(False), call(global_("collections", "OrderedDict")), *extra)


def dict_of(**items):
    return EMPTY_DICT + b"".join(data(key) + value + SETITEM for key, value in items.items())


def pickled(ops, protocol=2):
    return b"\x80" + bytes([protocol]) + ops + STOP


def write_archive(path, pickle_bytes, storages=None, root="archive", byteorder=b"little",
                  compression=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{root}/data.pkl", pickle_bytes)
        archive.writestr(f"{root}/byteorder", byteorder)
        for key, raw in (storages or {}).items():
            archive.writestr(zipfile.ZipInfo(f"{root}/data/{key}"), raw, compress_type=compression)
        archive.writestr(f"{root}/version", b"3\n")
    return path


SIX = np.arange(6, dtype="<f4")


def six_floats_file(path, **tensor_args):
    """A file with one tensor over the storage of six float32s 0..5."""
    args = {"offset": 0, "size": (2, 3), "stride": (3, 1), **tensor_args}
    ops = dict_of(w=tensor(storage("0", 6), args["offset"], args["size"], args["stride"]))
    return write_archive(path, pickled(ops), {"0": SIX.tobytes()})


def test_the_hand_made_files_are_what_torch_writes(tmp_path):
    path = six_floats_file(tmp_path / "hand.pth", offset=1, size=(2, 2), stride=(1, 2))
    expected = np.array([[1, 3], [2, 4]], np.float32)
    assert same(read_torch(path), {"w": expected})
    torch = pytest.importorskip("torch")
    assert same(torch_as_numpy(torch, torch.load(path, weights_only=True)), {"w": expected})


def test_member_names_are_keys_not_paths(tmp_path):
    folder = tmp_path / "inside"
    folder.mkdir()
    path = write_archive(folder / "dots.pth", pickled(dict_of(w=tensor(storage("0", 6), 0, (6,), (1,)))),
                         {"0": SIX.tobytes()}, root="..")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert same(read_torch(path), {"w": SIX})
    assert sorted(p.name for p in tmp_path.rglob("*")) == before
    absolute = write_archive(tmp_path / "absolute.pth", pickled(dict_of()), root="/etc")
    with pytest.raises(ValueError, match=r"no '<root>/data\.pkl'") as error:
        read_torch(absolute)
    one_line_error(error, absolute)


# --------------------------------------------------------------------------- hostile pickles


def payloads(marker):
    """Pickles that create ``marker`` when plain pickle loads them."""
    create = f"open({str(marker)!r}, 'w').close()"
    stack_global = b"\x8c\x08builtins\x8c\x04eval\x93"  # protocol 4's STACK_GLOBAL
    return {
        "os.system": pickled(call(global_("os", "system"), data(f"touch {shlex.quote(str(marker))}"))),
        "builtins.eval by STACK_GLOBAL": pickled(stack_global + MARK + data(create) + TUPLE + REDUCE, protocol=4),
        "subprocess.call": pickled(call(global_("subprocess", "call"), data([sys.executable, "-c", create]))),
        "builtins.exec inside a state dict": pickled(dict_of(epoch=data(3),
                                                           x=call(global_("builtins", "exec"), data(create)),
                                                           w=tensor(storage("0", 6), 0, (6,), (1,)))),
        "os.system by INST": b"(" + data(f"touch {shlex.quote(str(marker))}") + b"ios\nsystem\n.",
        "posix.system as a storage type": pickled(dict_of(w=tensor(
            MARK + data("storage") + call(global_("posix", "system"), data(f"touch {shlex.quote(str(marker))}"))
            + data("0") + data("cpu") + data(6) + TUPLE + BINPERSID, 0, (6,), (1,)))),
    }


PAYLOADS = list(payloads("marker"))


@pytest.mark.parametrize("name", PAYLOADS)
def test_the_payloads_run_under_plain_pickle(tmp_path, name):
    marker = tmp_path / "ran"
    try:
        pickle.loads(payloads(marker)[name])
    except pickle.UnpicklingError:
        pass  # plain pickle has no persistent_load for the storage after the payload ran
    assert marker.exists()


@pytest.mark.parametrize("name", PAYLOADS)
def test_hostile_pickles_are_refused_without_running(tmp_path, name):
    marker = tmp_path / "ran"
    path = write_archive(tmp_path / "hostile.pth", payloads(marker)[name], {"0": SIX.tobytes()})
    with pytest.raises(ValueError) as error:
        read_torch(path)
    message = one_line_error(error, path)
    refused = name.split(" ")[0] if name != "os.system by INST" else "os.system"
    assert f"holds {refused}, which fastconv does not unpickle" in message
    assert not marker.exists()


ORDERED_DICT = global_("collections", "OrderedDict")
REBUILD = global_("torch._utils", "_rebuild_tensor_v2")
GOOD_STORAGE = storage("0", 6)

WRONG_ARGUMENTS = {
    "a string as the storage": tensor(data("0"), 0, (6,), (1,)),
    "three arguments": call(REBUILD, GOOD_STORAGE, data(0), data((6,))),
    "a list as the size": call(REBUILD, GOOD_STORAGE, data(0), data([6]), data((1,)), data(False),
                               call(ORDERED_DICT)),
    "requires_grad a string": call(REBUILD, GOOD_STORAGE, data(0), data((6,)), data((1,)), data("yes"),
                                   call(ORDERED_DICT)),
    "neg flag set": tensor(GOOD_STORAGE, 0, (6,), (1,), data({"neg": True})),
    "OrderedDict of an int": call(ORDERED_DICT, data(5)),
    "OrderedDict of a non-pair": call(ORDERED_DICT, data([(1, 2, 3)])),
    "_codecs.encode to rot13": call(global_("_codecs", "encode"), data("abc"), data("rot13")),
    "_codecs.encode of a non-latin-1 text": call(global_("_codecs", "encode"), data("\u20ac"), data("latin1")),
    "set of a list of lists": call(global_("__builtin__", "set"), data([[1]])),
    "complex of a string": call(global_("__builtin__", "complex"), data("1")),
    "a parameter of an int": call(global_("torch._utils", "_rebuild_parameter"), data(1), data(True),
                                  call(ORDERED_DICT)),
    "a storage type called": call(global_("torch", "FloatStorage"), data(5)),
    "an int called": data(5) + data(()) + REDUCE,
    "a call with a list of arguments": global_("collections", "OrderedDict") + data([]) + REDUCE,
    "a persistent id of four": MARK + data("storage") + global_("torch", "FloatStorage") + data("0") + data(6)
    + TUPLE + BINPERSID,
    "a persistent id naming a function": MARK + data("storage") + REBUILD + data("0") + data("cpu") + data(6)
    + TUPLE + BINPERSID,
    "a persistent id with a negative size": storage("0", -6),
    "a storage left bare": dict_of(s=GOOD_STORAGE),
    "a global left bare": dict_of(g=ORDERED_DICT),
    "one key as two types": dict_of(a=tensor(GOOD_STORAGE, 0, (6,), (1,)),
                                    b=tensor(storage("0", 6, "IntStorage"), 0, (6,), (1,))),
    "a dict as a key": EMPTY_DICT + EMPTY_DICT + data(1) + SETITEM,
    "a nested tuple as a key": EMPTY_DICT + data(((1,),)) + data(1) + SETITEM,
    "a list appended to a dict": EMPTY_DICT + data(1) + b"a",
    "BUILD on a list": EMPTY_LIST + EMPTY_DICT + b"b",
    "protocol 6": b"",
    "no STOP": b"",
    "an empty stack": b"",
    "a missing memo entry": b"h\x07",
    "an unknown instruction": b"\xff",
    "NEWOBJ": ORDERED_DICT + data(()) + b"\x81",
}


@pytest.mark.parametrize("name", list(WRONG_ARGUMENTS))
def test_allowed_globals_with_wrong_arguments_and_garbled_pickles(tmp_path, name):
    ops = WRONG_ARGUMENTS[name]
    pickle_bytes = {"protocol 6": b"\x80\x06N.", "no STOP": b"\x80\x02N", "an empty stack": b"\x80\x02."}.get(
        name, pickled(ops))
    path = write_archive(tmp_path / "wrong.pth", pickle_bytes, {"0": SIX.tobytes()})
    with pytest.raises(ValueError) as error:
        read_torch(path)
    one_line_error(error, path)


def test_a_deeply_nested_key_is_refused_before_it_is_hashed(tmp_path):
    # Hashing a tuple nested a million deep overflows CPython's C stack.
    depth = 1_000_000
    ops = EMPTY_DICT + b")" + b"\x85" * depth + data(1) + SETITEM
    path = write_archive(tmp_path / "deep.pth", pickled(ops))
    with pytest.raises(ValueError, match="as a dict key") as error:
        read_torch(path)
    one_line_error(error, path)


def test_a_deeply_nested_value_loads(tmp_path):
    depth = 100_000
    path = write_archive(tmp_path / "deep.pth", pickled(dict_of(v=b"]" * depth + b"a" * (depth - 1))))
    value = read_torch(path)["v"]
    for _ in range(depth - 1):
        (value,) = value
    assert value == []


def test_a_dict_holding_itself_is_not_a_state_dict(tmp_path):
    ops = EMPTY_DICT + b"q\x64" + data("state_dict") + b"h\x64" + SETITEM  # memo 100: data() uses the first ones
    path = write_archive(tmp_path / "loop.pth", pickled(ops))
    result = read_torch(path)
    assert result["state_dict"] is result
    with pytest.raises(ValueError, match="not a state_dict") as error:
        read_weights(path)
    one_line_error(error, path)


# --------------------------------------------------------------------------- forged sizes


def peak_bytes(function):
    """The most memory Python and NumPy held at once while function ran."""
    tracemalloc.start()
    try:
        function()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


FORGED_TENSORS = {
    "negative stride": {"size": (6,), "stride": (-1,)},
    "huge stride": {"size": (2, 3), "stride": (2**40, 1)},
    "overflowing stride": {"size": (2, 3), "stride": (2**70, 1)},
    "negative offset": {"offset": -1},
    "offset past the storage": {"offset": 6},
    "huge offset": {"offset": 2**62},
    "size past the storage": {"size": (7,), "stride": (1,)},
    "a view one past the end": {"offset": 1, "size": (2, 3), "stride": (3, 1)},
    "size and stride of different lengths": {"size": (2, 3), "stride": (3,)},
    "negative size": {"size": (-2, 3)},
    "a float size": {"size": (2.0, 3)},
    "too many dimensions": {"size": (1,) * 40, "stride": (1,) * 40},
    "an empty tensor past the storage": {"size": (0,), "stride": (1,), "offset": 7},
}


@pytest.mark.parametrize("name", list(FORGED_TENSORS))
def test_forged_sizes_strides_and_offsets(tmp_path, name):
    path = six_floats_file(tmp_path / "forged.pth", **FORGED_TENSORS[name])
    with pytest.raises(ValueError) as error:
        read_torch(path)
    one_line_error(error, path)


def test_peak_bytes_sees_numpy_allocations():
    assert peak_bytes(lambda: np.ones(10**7, np.uint8)) > 10**7


@pytest.mark.parametrize("numel", [7, 10**12, 2**62])
def test_a_forged_storage_size_allocates_nothing(tmp_path, numel):
    ops = dict_of(w=tensor(storage("0", numel), 0, (6,), (1,)))
    path = write_archive(tmp_path / "forged.pth", pickled(ops), {"0": SIX.tobytes()})
    with pytest.raises(ValueError, match="has 24 bytes") as error:
        read_torch(path)
    one_line_error(error, path)
    assert peak_bytes(lambda: pytest.raises(ValueError, read_torch, path)) < 1e6


def test_a_broadcast_bomb_is_refused(tmp_path):
    # One float viewed as a 2**20 x 2**20 matrix (stride 0): 4 TiB if copied.
    path = six_floats_file(tmp_path / "bomb.pth", size=(2**20, 2**20), stride=(0, 0))
    with pytest.raises(ValueError, match="would expand to more than") as error:
        read_torch(path)
    one_line_error(error, path)
    assert peak_bytes(lambda: pytest.raises(ValueError, read_torch, path)) < 1e6


def test_one_storage_referenced_without_end_is_refused(tmp_path):
    numel = 64 * 1024  # 256 KiB, referenced by 400 tensors: 100 MiB
    ops = MARK + data("storage") + global_("torch", "FloatStorage") + data("0") + data("cpu") + data(numel) \
        + TUPLE + BINPERSID + b"q\x64" + b"0"  # memoized as 100, then popped
    ops += EMPTY_LIST + MARK + tensor(b"h\x64", 0, (numel,), (1,)) * 400 + APPENDS
    path = write_archive(tmp_path / "repeat.pth", pickled(ops), {"0": np.zeros(numel, np.float32).tobytes()})
    with pytest.raises(ValueError, match="would expand to more than") as error:
        read_torch(path)
    one_line_error(error, path)


def test_a_few_references_to_one_storage_load(tmp_path):
    ops = MARK + data("storage") + global_("torch", "FloatStorage") + data("0") + data("cpu") + data(6) \
        + TUPLE + BINPERSID + b"q\x64" + b"0"
    ops += EMPTY_LIST + MARK + tensor(b"h\x64", 0, (6,), (1,)) * 3 + tensor(b"h\x64", 2, (2,), (2,)) + APPENDS
    path = write_archive(tmp_path / "tied.pth", pickled(ops), {"0": SIX.tobytes()})
    result = read_torch(path)
    assert same(result, [SIX, SIX, SIX, np.array([2, 4], np.float32)])
    assert_own_memory(result)


# --------------------------------------------------------------------------- damaged archives


def patch_central_directory(path, name, **fields):
    """Rewrite sizes in the central directory record of entry ``name``."""
    raw = bytearray(path.read_bytes())
    at = raw.index(b"PK\x01\x02")
    while raw[at + 46:at + 46 + len(name)] != name.encode():
        at = raw.index(b"PK\x01\x02", at + 4)
    offsets = {"compress_type": (10, "<H"), "crc": (16, "<I"), "compressed": (20, "<I"), "size": (24, "<I")}
    for field, value in fields.items():
        offset, layout = offsets[field]
        struct.pack_into(layout, raw, at + offset, value)
    path.write_bytes(bytes(raw))


def valid_file(tmp_path):
    return six_floats_file(tmp_path / "valid.pth")


DAMAGE = {
    "empty": lambda path: path.write_bytes(b""),
    "cut in half": lambda path: path.write_bytes(path.read_bytes()[:len(path.read_bytes()) // 2]),
    "cut by one byte": lambda path: path.write_bytes(path.read_bytes()[:-1]),
    "cut to its first 40 bytes": lambda path: path.write_bytes(path.read_bytes()[:40]),
    "random bytes": lambda path: path.write_bytes(np.random.default_rng(1).bytes(3000)),
    "random bytes after a zip signature": lambda path: path.write_bytes(
        b"PK\x03\x04" + np.random.default_rng(2).bytes(3000)),
    "a bare pickle": lambda path: path.write_bytes(pickle.dumps({"w": [1.0, 2.0]})),
    "a storage byte changed": lambda path: path.write_bytes(
        path.read_bytes().replace(SIX.tobytes(), SIX.tobytes()[:-1] + b"\x01")),
    "a storage entry larger than the file": lambda path: patch_central_directory(
        path, "archive/data/0", compressed=2**31, size=2**31),
    "a storage entry claiming two sizes": lambda path: patch_central_directory(path, "archive/data/0", size=4),
    "a storage entry claiming compression": lambda path: patch_central_directory(
        path, "archive/data/0", compress_type=8),
    "no data.pkl": lambda path: zipfile.ZipFile(path, "w").writestr("archive/byteorder", b"little"),
    "two data.pkl": lambda path: (write_archive(path, pickled(dict_of())),
                                  zipfile.ZipFile(path, "a").writestr("other/data.pkl", pickled(dict_of()))),
    "a byteorder of neither": lambda path: write_archive(path, pickled(dict_of()), byteorder=b"middle"),
    "a missing storage entry": lambda path: write_archive(
        path, pickled(dict_of(w=tensor(storage("7", 6), 0, (6,), (1,)))), {"0": SIX.tobytes()}),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_damaged_archives(tmp_path, name):
    path = valid_file(tmp_path)
    assert same(read_torch(path), {"w": SIX.reshape(2, 3)})
    DAMAGE[name](path)
    with pytest.raises(ValueError) as error:
        read_torch(path)
    one_line_error(error, path)


def test_a_compressed_bomb_is_refused_unread(tmp_path):
    numel = 4 * 1024 * 1024  # 16 MiB of zeros, a few KiB compressed
    ops = dict_of(w=tensor(storage("0", numel), 0, (numel,), (1,)))
    path = write_archive(tmp_path / "bomb.pth", pickled(ops), {"0": bytes(4 * numel)},
                         compression=zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 1e6
    with pytest.raises(ValueError, match="compressed") as error:
        read_torch(path)
    one_line_error(error, path)
    assert peak_bytes(lambda: pytest.raises(ValueError, read_torch, path)) < 1e6


# --------------------------------------------------------------------------- fuzzing


def fuzz_file(torch, tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2), torch.nn.Linear(4, 3))
    state = net.state_dict()
    state["view"] = state["2.weight"][1:]
    state["bf16"] = torch.randn(3).to(torch.bfloat16)
    path = tmp_path / "fuzz.pth"
    torch.save({"state_dict": state, "epoch": 3, "name": "fuzz"}, path)
    return path


def test_flipped_bytes_give_the_file_or_an_error(torch, tmp_path):
    path = fuzz_file(torch, tmp_path)
    original = path.read_bytes()
    expected = torch_as_numpy(torch, torch.load(path, weights_only=True))
    rng = np.random.default_rng(0)
    outcomes = {"loaded": 0, "refused": 0}
    for _ in range(200):
        damaged = bytearray(original)
        damaged[rng.integers(len(damaged))] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        try:
            result = read_torch(path)
        except ValueError as error:
            assert "\n" not in str(error) and str(path) in str(error), str(error)
            outcomes["refused"] += 1
        else:
            # The CRCs cover the pickle and the storages: a file that loads is the original.
            assert same(result, expected)
            outcomes["loaded"] += 1
    assert outcomes["refused"] > 20 and outcomes["loaded"] > 20, outcomes


def test_flipped_pickle_bytes_agree_with_torch(torch, tmp_path):
    # The archive is rebuilt around each damaged pickle, so its CRC matches and the
    # interpreter itself meets the damage. torch is the oracle where both load.
    path = fuzz_file(torch, tmp_path)
    with zipfile.ZipFile(path) as archive:
        entries = {name: archive.read(name) for name in archive.namelist()}
    rng = np.random.default_rng(1)
    outcomes = {"both loaded": 0, "refused": 0, "only ours loaded": 0}
    damaged_path = tmp_path / "damaged.pth"
    for _ in range(200):
        damaged = bytearray(entries["fuzz/data.pkl"])
        damaged[rng.integers(len(damaged))] ^= int(rng.integers(1, 256))
        with zipfile.ZipFile(damaged_path, "w") as archive:
            for name, raw in entries.items():
                archive.writestr(name.replace("fuzz/", "damaged/"), bytes(damaged) if name == "fuzz/data.pkl" else raw)
        try:
            ours = read_torch(damaged_path)
        except ValueError as error:
            assert "\n" not in str(error) and str(damaged_path) in str(error), str(error)
            outcomes["refused"] += 1
            continue
        try:
            theirs = torch_as_numpy(torch, torch.load(damaged_path, weights_only=True))
        except Exception:  # noqa: BLE001 -- torch is stricter about what is not data (a device name)
            outcomes["only ours loaded"] += 1
            continue
        assert same(ours, theirs)
        outcomes["both loaded"] += 1
    assert outcomes["refused"] > 50 and outcomes["both loaded"] > 10, outcomes


# --------------------------------------------------------------------------- safetensors


SAFETENSORS_ARRAYS = {
    "F32": np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32),
    "F64": np.random.default_rng(1).standard_normal(4),
    "F16": np.random.default_rng(2).standard_normal((3, 1)).astype(np.float16),
    "I64": np.array([-2**40, 0, 2**40], np.int64),
    "I32": np.arange(-3, 3, dtype=np.int32).reshape(2, 3),
    "I16": np.array([-300, 300], np.int16),
    "I8": np.array([-128, 127], np.int8),
    "U8": np.array([0, 255], np.uint8),
    "BOOL": np.array([True, False, True]),
    "empty": np.zeros((0, 4), np.float32),
    "scalar": np.array(1.5, np.float32),
}


def test_safetensors_written_by_the_package(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = tmp_path / "theirs.safetensors"
    safetensors_numpy.save_file(SAFETENSORS_ARRAYS, str(path), metadata={"note": "hello"})
    ours, metadata = read_safetensors(path)
    theirs = safetensors_numpy.load_file(str(path))
    assert metadata == {"note": "hello"}
    assert same(dict(sorted(ours.items())), dict(sorted(theirs.items())))
    assert same(dict(sorted(ours.items())), dict(sorted(SAFETENSORS_ARRAYS.items())))


def test_safetensors_bfloat16_written_by_the_package(torch, tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {"bf16": torch.randn(3, 4).to(torch.bfloat16), "scalar": torch.tensor(2.0, dtype=torch.bfloat16)}
    path = tmp_path / "bf16.safetensors"
    safetensors_torch.save_file(tensors, str(path))
    ours, _ = read_safetensors(path)
    assert same(ours, torch_as_numpy(torch, safetensors_torch.load_file(str(path))))


def test_safetensors_written_here_read_by_the_package(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    path = write_safetensors(tmp_path / "ours.safetensors", SAFETENSORS_ARRAYS, {"a": "b"})
    assert same(safetensors_numpy.load_file(str(path)), SAFETENSORS_ARRAYS)


def safetensors_bytes(header, data=b"", length=None):
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + data


HOSTILE_SAFETENSORS = {
    "empty": b"",
    "seven bytes": b"\x01" * 7,
    "a header longer than the file": safetensors_bytes(b"{}", length=10**6),
    "a header of 2**63 bytes": safetensors_bytes(b"{}", length=2**63),
    "a header that is not JSON": safetensors_bytes(b"{nope"),
    "a header nested without end": safetensors_bytes(b"[" * 100_000 + b"]" * 100_000),
    "a header that is a list": safetensors_bytes([1, 2]),
    "a header that is not UTF-8": safetensors_bytes(b'{"\xff": 1}'),
    "offsets past the data": safetensors_bytes({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}},
                                               b"\x00" * 8),
    "offsets that do not fit the shape": safetensors_bytes(
        {"a": {"dtype": "F32", "shape": [2**40], "data_offsets": [0, 8]}}, b"\x00" * 8),
    "overlapping tensors": safetensors_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                              "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}},
                                             b"\x00" * 8),
    "reversed offsets": safetensors_bytes({"a": {"dtype": "U8", "shape": [0], "data_offsets": [4, 0]}}, b"\x00" * 4),
    "an unknown dtype": safetensors_bytes({"a": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}}, b"\x00"),
    "a dtype that is a list": safetensors_bytes({"a": {"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}},
                                                b"\x00" * 4),
    "a negative dimension": safetensors_bytes({"a": {"dtype": "U8", "shape": [-1], "data_offsets": [0, 0]}}),
    "a bool dimension": safetensors_bytes({"a": {"dtype": "U8", "shape": [True], "data_offsets": [0, 1]}}, b"\x00"),
    "a float offset": safetensors_bytes({"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1.0]}}, b"\x00"),
    "an entry without offsets": safetensors_bytes({"a": {"dtype": "U8", "shape": [1]}}, b"\x00"),
    "metadata that is a list": safetensors_bytes({"__metadata__": ["a"]}),
    "metadata of numbers": safetensors_bytes({"__metadata__": {"a": 1}}),
    "random bytes": np.random.default_rng(3).bytes(2000),
}


@pytest.mark.parametrize("name", list(HOSTILE_SAFETENSORS))
def test_hostile_safetensors(tmp_path, name):
    path = tmp_path / "hostile.safetensors"
    path.write_bytes(HOSTILE_SAFETENSORS[name])
    with pytest.raises(ValueError) as error:
        read_safetensors(path)
    one_line_error(error, path)
    assert peak_bytes(lambda: pytest.raises(ValueError, read_safetensors, path)) < 2e6


def test_flipped_safetensors_bytes_agree_with_the_package(tmp_path):
    safetensors_numpy = pytest.importorskip("safetensors.numpy")
    original_path = write_safetensors(tmp_path / "valid.safetensors", SAFETENSORS_ARRAYS, {"a": "b"})
    original = original_path.read_bytes()
    path = tmp_path / "flipped.safetensors"
    rng = np.random.default_rng(4)
    outcomes = {"both loaded": 0, "refused": 0, "only ours loaded": 0}
    for _ in range(200):
        damaged = bytearray(original)
        damaged[rng.integers(len(damaged))] ^= int(rng.integers(1, 256))
        path.write_bytes(bytes(damaged))
        try:
            ours, _ = read_safetensors(path)
        except ValueError as error:
            assert "\n" not in str(error) and str(path) in str(error), str(error)
            outcomes["refused"] += 1
            continue
        try:
            theirs = safetensors_numpy.load_file(str(path))
        except Exception:  # noqa: BLE001 -- the package also checks that the data has no gaps
            outcomes["only ours loaded"] += 1
            continue
        assert same(dict(sorted(ours.items())), dict(sorted(theirs.items())))
        outcomes["both loaded"] += 1
    assert outcomes["refused"] > 20 and outcomes["both loaded"] > 20, outcomes


def test_numbers_in_messages_are_exact(tmp_path):
    path = six_floats_file(tmp_path / "exact.pth", size=(7,), stride=(1,))
    with pytest.raises(ValueError, match=r"reaches element 6, the storage has 6") as error:
        read_torch(path)
    one_line_error(error, path)
