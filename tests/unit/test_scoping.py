"""Where a key's storage shows: prefixes (connection, key), `--storage` specs and `sub_paths`
narrowing (service/scoping.py), what an execution records of it (service/data_mounts.plan),
and what the MCP tool description says of a key's buckets (mcp/tools.py).

Every refusal is an InvalidRequest (400 validation_error) that names what was refused."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from sandboxd.errors import InvalidRequest
from sandboxd.mcp.tools import tool_list
from sandboxd.service import Principal, scoping
from sandboxd.service.data_mounts import plan
from sandboxd.service.storage import StorageMountBinding
from sandboxd.service.volumes import VolumeBinding
from sandboxd.store import Org, Sandbox, StorageBinding, StorageConnection, Volume

SLUGS = ("alpha", "beta", "gamma")
NOW = datetime(2026, 12, 7, tzinfo=UTC)


# --- prefix_of, join ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("", ""),
        ("/", ""),
        ("///", ""),
        ("a", "a"),
        ("/a/b/", "a/b"),
        ("a//b", "a/b"),  # one rule with every path in a bucket: empty names dropped
        ("a/b/c", "a/b/c"),
        ("reports 2026/q1", "reports 2026/q1"),  # spaces are plain characters
        ("naïve/中文", "naïve/中文"),
        ("x..y/.hidden", "x..y/.hidden"),  # only '.' and '..' as a whole name are refused
        ("a" * 255, "a" * 255),
    ],
)
def test_prefix_of_normalizes(raw: str, expected: str) -> None:
    assert scoping.prefix_of(raw, "prefix") == expected


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("a/./b", "'.' or '..'"),
        ("a/../b", "'.' or '..'"),
        ("..", "'.' or '..'"),
        ("./a", "'.' or '..'"),
        ("a/..", "'.' or '..'"),
        ("a\\b", "backslashes"),
        ("a\x00b", "control characters"),
        ("a\nb", "control characters"),
        ("a\tb", "control characters"),
        ("a\x7fb", "control characters"),
        ("a%2eb", "percent-encoded"),
        ("a%2E%2E/b", "percent-encoded"),
        ("a%2fb", "percent-encoded"),
        ("a%5Cb", "percent-encoded"),
        ("a%00", "percent-encoded"),
        ("a%252e", "percent-encoded"),
        ("a%c0%ae", "percent-encoded"),
        ("x" * 1025, "at most 1024 characters"),
        ("ok/" + "y" * 256, "at most 255 bytes"),
        ("é" * 128, "at most 255 bytes"),  # 256 bytes in UTF-8
    ],
)
def test_prefix_of_refuses(raw: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        scoping.prefix_of(raw, "the key's prefix")
    assert words in info.value.message
    assert info.value.message.startswith("the key's prefix") or "of the key's prefix" in info.value.message


def test_prefix_of_quotes_what_it_refuses_but_not_all_of_it() -> None:
    with pytest.raises(InvalidRequest) as info:
        scoping.prefix_of("team/../" + "z" * 500, "prefix")
    assert "'team/../zz" in info.value.message and "z" * 100 not in info.value.message


def test_join_skips_unset_levels() -> None:
    assert scoping.join() == ""
    assert scoping.join("", "") == ""
    assert scoping.join("conn", "") == "conn"
    assert scoping.join("", "key") == "key"
    assert scoping.join("conn/p", "key", "sub/dir") == "conn/p/key/sub/dir"
    assert scoping.join("", "key", "", "sub") == "key/sub"


def test_dest() -> None:
    assert scoping.dest("alpha", "") == "/data/alpha"
    assert scoping.dest("alpha", "x/y") == "/data/alpha/x/y"


# --- parse_binding (`keys create --storage NAME[:ro][:prefix=PATH]`) -----------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("lake", ("lake", False, "")),
        ("lake:ro", ("lake", True, "")),
        ("lake:rw", ("lake", False, "")),
        ("lake:prefix=team/a", ("lake", False, "team/a")),
        ("lake:ro:prefix=/team/a/", ("lake", True, "team/a")),
        ("lake:prefix=team:ro", ("lake", True, "team")),
        ("lake:prefix=", ("lake", False, "")),
        ("lake:ro:rw", ("lake", False, "")),  # the last mode given wins
    ],
)
def test_parse_binding(spec: str, expected: tuple[str, bool, str]) -> None:
    assert scoping.parse_binding(spec) == expected


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("", "name is missing"),
        (":ro", "name is missing"),
        ("lake:RO", "not 'RO'"),
        ("lake:readonly", "not 'readonly'"),
        ("lake:", "not ''"),
        ("lake:path=x", "not 'path=x'"),
        ("lake:prefix=a/../b", "'.' or '..'"),
        ("lake:prefix=a%2fb", "percent-encoded"),
        ("lake:prefix=a\nb", "control characters"),
        ("lake:prefix=a\\b", "backslashes"),
    ],
)
def test_parse_binding_refuses(spec: str, words: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        scoping.parse_binding(spec)
    assert words in info.value.message


def test_parse_binding_names_the_spec() -> None:
    with pytest.raises(InvalidRequest) as info:
        scoping.parse_binding("lake:rx")
    assert "--storage 'lake:rx'" in info.value.message and "NAME[:ro][:prefix=PATH]" in info.value.message


def test_a_prefix_with_a_colon_cannot_be_bound() -> None:
    """':' separates the options: `prefix=a:b` is the prefix `a` and an unknown option `b`."""
    with pytest.raises(InvalidRequest, match="not 'b'"):
        scoping.parse_binding("lake:prefix=a:b")


# --- narrow (`sub_paths`) ----------------------------------------------------------------


def test_no_sub_paths_shows_every_mount_whole() -> None:
    assert scoping.narrow(None, SLUGS) == {"alpha": ("",), "beta": ("",), "gamma": ("",)}
    assert scoping.narrow(None, ()) == {}


def test_only_the_named_mounts_are_shown() -> None:
    assert scoping.narrow(["/data/alpha/x"], SLUGS) == {"alpha": ("x",)}
    assert scoping.narrow(["/data/beta/a/b", "/data/gamma"], SLUGS) == {"beta": ("a/b",), "gamma": ("",)}


def test_an_empty_list_shows_nothing() -> None:
    """Least privilege: sub_paths given, and none of it names a mount, so none is mounted."""
    assert scoping.narrow([], SLUGS) == {}


@pytest.mark.parametrize(
    ("entry", "sub"),
    [
        ("/data/alpha", ""),
        ("/data/alpha/", ""),
        ("/data/alpha/.", ""),
        ("/data/alpha/x", "x"),
        ("/data/alpha/x/", "x"),
        ("/data/alpha//x//y/", "x/y"),
        ("/data/alpha/./x/./y", "x/y"),
        ("/data/alpha/x y/中文", "x y/中文"),
        ("/data/alpha/.hidden", ".hidden"),
    ],
)
def test_entries_are_normalized(entry: str, sub: str) -> None:
    assert scoping.narrow([entry], SLUGS) == {"alpha": (sub,)}


def test_nested_entries_collapse_to_the_outermost() -> None:
    assert scoping.narrow(["/data/alpha/x/y", "/data/alpha/x", "/data/alpha/x/y/z"], SLUGS) == {"alpha": ("x",)}
    assert scoping.narrow(["/data/alpha/x", "/data/alpha"], SLUGS) == {"alpha": ("",)}
    # siblings stay apart, and a name that merely starts like another is not inside it
    assert scoping.narrow(["/data/alpha/x", "/data/alpha/xy", "/data/alpha/x-y/z"], SLUGS) == {
        "alpha": ("x", "x-y/z", "xy")
    }
    # duplicates, also spelled differently, are one
    assert scoping.narrow(["/data/alpha/x", "/data/alpha/x/", "/data/alpha//x"], SLUGS) == {"alpha": ("x",)}


@pytest.mark.parametrize(
    "entry",
    [
        "/data/nope/x",
        "/data/nope",
        "/data/alphabet/x",  # a slug that starts like a bound one
        "/data/alph",
        "/data/",
        "/data",
        "/data//alpha/x",
        "/datax/alpha",
        "data/alpha/x",
        "/home/baponi/alpha",
        "/etc/passwd",
        "",
    ],
)
def test_an_entry_outside_every_mount_is_refused_naming_it(entry: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        scoping.narrow(["/data/alpha/ok", entry], SLUGS)
    message = info.value.message
    assert f"sub_paths entry {entry!r}" in message
    assert "is not inside a mount of this API key" in message
    assert "/data/alpha/, /data/beta/, /data/gamma/" in message


def test_a_key_without_mounts_says_so() -> None:
    with pytest.raises(InvalidRequest, match=r"'/data/alpha/x' is not inside .*\(its mounts: none\)"):
        scoping.narrow(["/data/alpha/x"], ())


@pytest.mark.parametrize(
    "entry",
    [
        "/data/alpha/..",
        "/data/alpha/../beta",
        "/data/alpha/x/../../beta",
        "/data/alpha/x..y",  # '..' anywhere, as the request's validation has it
        "/data/alpha/%2e%2e/beta",
        "/data/alpha/%2E%2E%2Fbeta",
        "/data/alpha/x%2fy",
        "/data/alpha/x%5cy",
        "/data/alpha/%00",
        "/data/alpha/%252e%252e",
        "/data/alpha/%c0%ae%c0%ae",
        "/data/alpha/x\\..\\beta",
        "/data/alpha/x\\y",
        "/data/alpha/x\x00",
        "/data/alpha/x\ny",
        "/data/alpha/x\r",
        "/data/alpha/\ttab",
        "/data/alpha/\x1b[31m",
        "/data/alpha/x\x7f",
        "/data/../etc",
        "/data/nope/../alpha",  # refused for the traversal even where the slug is unknown
    ],
)
def test_traversal_encodings_and_control_characters_are_refused_naming_the_entry(entry: str) -> None:
    with pytest.raises(InvalidRequest) as info:
        scoping.narrow([entry], SLUGS)
    assert f"sub_paths entry {entry[:80]!r}" in info.value.message


def test_a_lone_surrogate_is_refused() -> None:
    with pytest.raises(InvalidRequest, match="lone surrogate"):
        scoping.narrow(["/data/alpha/\ud800"], SLUGS)


def test_an_overlong_name_is_refused() -> None:
    assert scoping.narrow(["/data/alpha/" + "n" * 255], SLUGS) == {"alpha": ("n" * 255,)}
    with pytest.raises(InvalidRequest, match="at most 255 bytes"):
        scoping.narrow(["/data/alpha/" + "n" * 256], SLUGS)


def test_a_long_entry_is_quoted_in_part() -> None:
    entry = "/data/nope/" + "q" * 400
    with pytest.raises(InvalidRequest) as info:
        scoping.narrow([entry], SLUGS)
    assert repr(entry[:80]) in info.value.message and "q" * 100 not in info.value.message


# --- plan: what an execution records -------------------------------------------------------


def _volume(slug: str, read_only: bool = False) -> VolumeBinding:
    return VolumeBinding(org_id="org_1", slug=slug, read_only=read_only)


def _bucket(name: str, path: str, read_only: bool = False, kind: str = "s3") -> StorageMountBinding:
    return StorageMountBinding("org_1", f"stc_{name}", name, kind, read_only, path)


def test_plan_without_sub_paths_records_every_mount_whole() -> None:
    shown = plan([_volume("alpha"), _volume("beta", True)], [_bucket("lake", "conn/key", kind="gcs")], None)
    assert [s.record() for s in shown] == [
        {"name": "alpha", "type": "volume", "path": "/data/alpha", "read_only": False, "scope": ""},
        {"name": "beta", "type": "volume", "path": "/data/beta", "read_only": True, "scope": ""},
        {"name": "lake", "type": "gcs", "path": "/data/lake", "read_only": False, "scope": "conn/key"},
    ]


def test_plan_with_sub_paths_records_only_what_is_shown() -> None:
    shown = plan(
        [_volume("alpha"), _volume("beta", True)],
        [_bucket("lake", "conn/key", True), _bucket("pond", "")],
        ["/data/alpha/x/y", "/data/alpha/z", "/data/lake/in/2026", "/data/alpha/x"],
    )
    assert [s.record() for s in shown] == [
        {"name": "alpha", "type": "volume", "path": "/data/alpha/x", "read_only": False, "scope": "x"},
        {"name": "alpha", "type": "volume", "path": "/data/alpha/z", "read_only": False, "scope": "z"},
        {"name": "lake", "type": "s3", "path": "/data/lake/in/2026", "read_only": True, "scope": "conn/key/in/2026"},
    ]


def test_plan_refuses_an_entry_of_no_mount_of_the_key() -> None:
    with pytest.raises(InvalidRequest, match=r"'/data/gamma/x' is not inside a mount .*/data/alpha/, /data/lake/"):
        plan([_volume("alpha")], [_bucket("lake", "")], ["/data/gamma/x"])


# --- what the MCP tool says of it ------------------------------------------------------------


def _mcp_description(
    volumes: tuple[tuple[Volume, bool], ...] = (),
    storage: tuple[tuple[StorageConnection, StorageBinding], ...] = (),
) -> str:
    org = Org(id="org_1", name="acme", created_at=NOW)
    sandbox = Sandbox(id="sbx_1", org_id=org.id, name="s", cpus=1, memory_mib=512, network="none",
                      timeout_cap_s=60, created_at=NOW)
    principal = Principal(key=None, org=org, sandbox=sandbox, volumes=volumes, storage=storage)
    tools = {t.name: t for t in tool_list(principal, frozenset({"python"}), 4096)}
    return tools["sandbox_execute"].description or ""


def _connection(name: str, kind: str, read_only: bool) -> StorageConnection:
    return StorageConnection(f"stc_{name}", "org_1", name, kind, "bkt", None, None, "conn-prefix", read_only,
                             b"sealed-secret", NOW)


def test_the_mcp_tool_lists_buckets_only_when_the_key_has_storage() -> None:
    assert "Buckets" not in _mcp_description()
    assert "bucket" not in _mcp_description().lower()
    data = Volume(id="vol_1", org_id="org_1", slug="datasets", quota_mib=10, created_at=NOW)
    assert "Buckets" not in _mcp_description(volumes=((data, False),))

    lake, pond, sea = _connection("lake", "s3", False), _connection("pond", "gcs", True), _connection("sea", "azure", False)
    text = _mcp_description(
        volumes=((data, False),),
        storage=(
            (lake, StorageBinding("key_1", lake.id, False, "team")),
            (pond, StorageBinding("key_1", pond.id, False, "")),  # the connection is read-only
            (sea, StorageBinding("key_1", sea.id, True, "")),  # the binding is
        ),
    )
    assert "Buckets: /data/lake/ (s3, read-write), /data/pond/ (gcs, read-only), /data/sea/ (azure, read-only)" in text
    assert "/data/datasets/ (read-write) hold shared, persistent files. Buckets:" in text
    # nothing of the bucket's name, prefixes or credentials; no sub_paths (not an MCP field)
    for hidden in ("bkt", "conn-prefix", "team", "sealed", "sub_paths"):
        assert hidden not in text
    assert "  " not in text
    only_buckets = _mcp_description(storage=((lake, StorageBinding("key_1", lake.id, False, "")),))
    assert "output_truncated is true). Buckets: /data/lake/ (s3, read-write) are cloud storage" in only_buckets
    assert "Volumes" not in only_buckets and "  " not in only_buckets
