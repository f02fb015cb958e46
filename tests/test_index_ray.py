"""The sharded index built by Ray tasks (``frerec_fast.index.ray_build``) on a real
local Ray cluster: byte for byte the local build (manifest and every shard file), also
for an append and through ``frerec index --ray``; a task's Python error ends the build
with no manifest written."""
import pytest

import frerec_fast as ff
from frerec_fast.cli import main
from run_helpers import one_thread, ray_cluster  # noqa: F401 - fixtures
from test_index_shards import files_of, make_real, real_files

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'frerec_fast[ray]')")

SHARD = 6


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    yield ray_cluster


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """20 real slices (4 shards of 6 files, the last of 2) and, apart, 5 more to append."""
    files = real_files(every=7)
    root = tmp_path_factory.mktemp("real")
    a = make_real(root / "a", files[:20])
    b = make_real(root / "b", files[20:25])
    (b / "mri" / "broken.png").write_bytes(b"not a png")  # a skipped file, recorded
    return a, b


def test_ray_build_and_append_are_byte_identical_to_local(cluster, real, tmp_path):
    from frerec_fast.index.ray_build import build_index_ray
    a, b = real
    local = ff.build_index(a, tmp_path / "local", shard_size=SHARD, workers=1, progress=False)
    got = build_index_ray(a, tmp_path / "ray", shard_size=SHARD, num_workers=2,
                          progress=False)
    assert len(got.manifest.shards) == 4
    assert files_of(tmp_path / "ray") == files_of(tmp_path / "local")
    assert ray.is_initialized()  # a cluster it did not start is left running
    # Append, both ways: same bytes again (the skipped file's message names its path).
    ff.build_index(b, tmp_path / "local", append=True, workers=1, progress=False)
    got = build_index_ray(b, tmp_path / "ray", append=True, progress=False)
    assert files_of(tmp_path / "ray") == files_of(tmp_path / "local")
    assert len(got) == len(local) + 5 and len(got.skipped) == 1
    # The CLI flag (on the running cluster).
    assert main(["index", str(a), str(tmp_path / "cli"), "--shard-size", str(SHARD),
                 "--ray", "--ray-workers", "2", "-q"]) == 0
    ff.build_index(a, tmp_path / "local_a", shard_size=SHARD, workers=1, progress=False)
    assert files_of(tmp_path / "cli") == files_of(tmp_path / "local_a")


def test_ray_build_error_writes_no_manifest(cluster, real, tmp_path):
    """A task's Python exception (here: an unwritable shard directory) is raised as
    itself, and no manifest is committed."""
    from frerec_fast.index.ray_build import build_index_ray
    a, _ = real
    out = tmp_path / "idx"
    out.mkdir()
    (out / "shards").write_text("a file where the shard directory goes")
    with pytest.raises(OSError):
        build_index_ray(a, out, shard_size=SHARD, progress=False)
    assert not (out / "index.json").exists()
