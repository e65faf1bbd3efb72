"""The local backend's sandbox decisions: users, environment, trust, and where cgroups go."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from gateway.backends import cgroups
from gateway.backends.cgroups import Cgroups, PodLimits, probe_cgroups
from gateway.backends.sandbox import (
    Isolation,
    RunAs,
    UidClaims,
    check_reachable,
    choose_uid,
    claim_work_dir,
    instance_name,
    parse_run_as,
    process_env,
)
from gateway.errors import ConfigError

RANGE = RunAs(first=1_900_000_000, last=1_900_000_003)


def test_a_uid_range_gives_each_job_its_own_uid() -> None:
    in_use: dict[str, int] = {}
    for job in ("a", "b", "c", "d"):
        in_use[job] = choose_uid(job, RANGE, in_use)
    assert sorted(in_use.values()) == list(range(RANGE.first, RANGE.last + 1))


def test_a_job_keeps_the_uid_its_running_replicas_have() -> None:
    assert choose_uid("a", RANGE, {"a": RANGE.last, "b": RANGE.first}) == RANGE.last


def test_a_free_job_uid_is_stable_across_calls() -> None:
    assert choose_uid("job-x", RANGE, {}) == choose_uid("job-x", RANGE, {})


def test_a_full_uid_range_is_an_error_not_a_shared_uid() -> None:
    in_use = {str(i): RANGE.first + i for i in range(4)}
    with pytest.raises(RuntimeError, match="in use"):
        choose_uid("late", RANGE, in_use)


def test_one_named_user_runs_every_job() -> None:
    nobody = parse_run_as("nobody")
    assert nobody.shared
    assert nobody.name == "nobody"
    assert choose_uid("a", nobody, {"b": nobody.first}) == nobody.first


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("root", "never run as root"),
        ("0", "never run as root"),
        ("10-20", "belong to the system"),
        ("5-2", "uid range"),
        ("no-such-user-here", "no such user"),
        ("65000-65535", "is the user nobody"),
    ],
)
def test_run_as_refuses_root_system_uids_and_unknown_users(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_run_as(text)


def test_a_replica_environment_holds_nothing_of_the_gateways(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MUSTER_DATABASE_URL", "postgresql://secret@db/muster")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "gateway-secret")
    env = process_env(
        {"TF_CONFIG": "{}", "MUSTER_JOB_NAME": "j", "K": "V"},
        home=Path("/w/j/p"),
        tmp=Path("/w/j/p/tmp"),
        path="/usr/bin:/bin",
        user="muster-job",
    )
    assert env == {
        "PATH": "/usr/bin:/bin",
        "HOME": "/w/j/p",
        "TMPDIR": "/w/j/p/tmp",
        "LANG": "C.UTF-8",
        "USER": "muster-job",
        "LOGNAME": "muster-job",
        "TF_CONFIG": "{}",
        "MUSTER_JOB_NAME": "j",
        "K": "V",
    }


def test_a_jobs_own_variables_may_replace_the_base() -> None:
    env = process_env(
        {"PATH": "/opt/conda/bin:/usr/bin"}, home=Path("/h"), tmp=Path("/t"), path="/bin", user="u"
    )
    assert env["PATH"] == "/opt/conda/bin:/usr/bin"


def test_an_unisolated_gateway_runs_only_trusted_tenants() -> None:
    isolation = Isolation(
        run_as=None, namespaces=False, cgroups=None, trusted_tenants=frozenset({"demo"})
    )
    assert isolation.refusal("demo") is None
    refusal = isolation.refusal("search")
    assert refusal is not None
    assert "MUSTER_LOCAL_TRUSTED_TENANTS" in refusal
    assert "(demo)" in refusal
    assert "NOT isolated" in isolation.describe()


def test_trusting_every_tenant_and_isolation_both_lift_the_refusal() -> None:
    everyone = Isolation(run_as=None, namespaces=False, cgroups=None, trusted_tenants=None)
    isolated = Isolation(
        run_as=RANGE, namespaces=True, cgroups=None, trusted_tenants=frozenset({"demo"})
    )
    assert everyone.refusal("search") is None
    assert isolated.refusal("search") is None
    assert isolated.describe().startswith("isolated: each job as its own uid")


def test_a_work_dir_behind_a_private_directory_is_refused() -> None:
    base = Path(tempfile.mkdtemp(prefix="reach-", dir="/tmp"))
    try:
        base.chmod(0o755)
        private = base / "home"
        private.mkdir(mode=0o700)
        with pytest.raises(ConfigError, match=f"{private} is not searchable by others"):
            check_reachable(private / "work", 1_900_000_000)
        private.chmod(0o711)
        check_reachable(private / "work", 1_900_000_000)
    finally:
        shutil.rmtree(base)


def test_a_work_dir_belongs_to_one_data_dir(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    claim_work_dir(work, tmp_path / "a")
    claim_work_dir(work, tmp_path / "a")  # the same one again, as after a restart
    with pytest.raises(ConfigError, match="used by the data directory"):
        claim_work_dir(work, tmp_path / "b")


def test_each_data_dir_names_its_cgroups_apart(tmp_path: Path) -> None:
    first, second = instance_name(tmp_path / "a"), instance_name(tmp_path / "b")
    assert first.startswith("muster-")
    assert first != second
    assert instance_name(tmp_path / "a") == first


# -- cgroups ------------------------------------------------------------------------------------


def _fake_hierarchy(tmp_path: Path, version: int) -> tuple[Path, Path, Path]:
    """A /proc/self/cgroup and mountinfo describing cgroup mounts under ``tmp_path``."""
    proc_cgroup, mountinfo = tmp_path / "cgroup", tmp_path / "mountinfo"
    if version == 2:
        mount = tmp_path / "unified"
        mount.mkdir()
        (mount / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
        (mount / "cgroup.subtree_control").write_text("")
        proc_cgroup.write_text("0::/user.slice/session-1.scope\n")
        mountinfo.write_text(
            f"25 1 0:22 / /proc rw - proc proc rw\n"
            f"31 23 0:27 / {mount} rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
        )
        return proc_cgroup, mountinfo, mount
    lines = []
    for index, controller in enumerate(("cpu", "memory", "pids")):
        point = tmp_path / controller
        (point / "ctr" / "gw").mkdir(parents=True)
        lines.append(f"{40 + index} 31 0:{30 + index} / {point} rw - cgroup cgroup rw,{controller}")
    mountinfo.write_text("\n".join(lines) + "\n")
    proc_cgroup.write_text("4:memory:/ctr/gw\n2:pids:/ctr/gw\n1:cpu:/ctr/gw\n0::/\n")
    return proc_cgroup, mountinfo, tmp_path


def test_cgroup_v1_pods_go_under_this_process_cgroup_in_each_hierarchy(tmp_path: Path) -> None:
    proc_cgroup, mountinfo, root = _fake_hierarchy(tmp_path, 1)
    found, why = probe_cgroups("muster-x", proc_cgroup=proc_cgroup, mountinfo=mountinfo)
    assert why == ""
    assert found == Cgroups(
        version=1,
        parents=tuple((c, root / c / "ctr" / "gw" / "muster-x") for c in ("memory", "cpu", "pids")),
    )
    # Every replica of the gateway together holds at most half the machine's process ids.
    assert int((root / "pids" / "ctr" / "gw" / "muster-x" / "pids.max").read_text()) >= 1024
    dirs = found.create("job.0.pod", PodLimits(memory_bytes=64 * 2**20, cpu_millis=250, pids=99))
    memory, cpu, pids = (Path(d) for d in dirs)
    assert (memory / "memory.limit_in_bytes").read_text() == str(64 * 2**20)
    assert (cpu / "cpu.cfs_quota_us").read_text() == "25000"
    assert (cpu / "cpu.cfs_period_us").read_text() == "100000"
    assert (pids / "pids.max").read_text() == "99"
    assert found.orphans(["job.0.pod"]) == []
    assert found.orphans([]) == [tuple(dirs)]


def test_cgroup_v2_pods_go_under_a_parent_with_the_controllers_enabled(tmp_path: Path) -> None:
    proc_cgroup, mountinfo, mount = _fake_hierarchy(tmp_path, 2)
    found, why = probe_cgroups("muster-x", proc_cgroup=proc_cgroup, mountinfo=mountinfo)
    assert (why, found) == ("", Cgroups(version=2, parents=(("", mount / "muster-x"),)))
    assert (mount / "muster-x" / "cgroup.subtree_control").read_text() == "+memory +cpu +pids"
    (path,) = found.create("p", PodLimits(memory_bytes=2**30, cpu_millis=1500, pids=10))
    assert Path(path, "memory.max").read_text() == str(2**30)
    assert Path(path, "cpu.max").read_text() == "150000 100000"
    assert Path(path, "pids.max").read_text() == "10"


def test_cgroup_v2_without_the_memory_controller_is_no_cgroups(tmp_path: Path) -> None:
    proc_cgroup, mountinfo, mount = _fake_hierarchy(tmp_path, 2)
    (mount / "cgroup.controllers").write_text("cpu pids\n")
    found, why = probe_cgroups("muster-x", proc_cgroup=proc_cgroup, mountinfo=mountinfo)
    assert found is None
    assert "memory" in why


def test_the_oom_killer_is_read_from_either_version(tmp_path: Path) -> None:
    v1, v2 = tmp_path / "v1", tmp_path / "v2"
    v1.mkdir()
    v2.mkdir()
    (v1 / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    (v2 / "memory.events").write_text("low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
    assert not cgroups.oom_killed([str(v1)])
    assert cgroups.oom_killed([str(v2)])


def test_a_cgroup_of_an_exited_pod_is_removed(tmp_path: Path) -> None:
    pod = tmp_path / "pod"
    pod.mkdir()
    cgroups.remove([str(pod), str(tmp_path / "gone")])
    assert not os.path.exists(pod)


def test_the_supervisor_mounts_only_the_jobs_own_tmp_never_through_a_link(
    tmp_path: Path,
) -> None:
    from gateway.backends.supervisor import SandboxError, _own_directory

    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "tmp"
    link.symlink_to(real)
    with pytest.raises(OSError, match=r"Too many levels|Not a directory"):
        _own_directory(str(link), None)
    fd = _own_directory(str(real), os.getuid())
    os.close(fd)
    with pytest.raises(SandboxError, match="not the job's own"):
        _own_directory(str(real), os.getuid() + 1)


def test_a_uid_claimed_by_another_gateway_is_not_given_twice(tmp_path: Path) -> None:
    ours, theirs = UidClaims("ours", tmp_path / "uids"), UidClaims("theirs", tmp_path / "uids")
    assert ours.claim(1_900_000_000, "job-a")
    assert ours.claim(1_900_000_000, "job-a")  # the same job again
    assert not theirs.claim(1_900_000_000, "job-b")
    assert theirs.claim(1_900_000_001, "job-b")
    ours.release(1_900_000_000, "job-a")
    assert theirs.claim(1_900_000_000, "job-c")


def test_a_stale_claim_of_a_uid_that_runs_nothing_is_taken_over(tmp_path: Path) -> None:
    ours, theirs = UidClaims("ours", tmp_path / "uids"), UidClaims("theirs", tmp_path / "uids")
    assert theirs.claim(1_900_000_007, "killed-gateways-job")
    old = time.time() - 2 * UidClaims.FRESH_SECONDS
    os.utime(tmp_path / "uids" / "1900000007", (old, old))
    assert ours.claim(1_900_000_007, "job-a")
    assert (tmp_path / "uids" / "1900000007").read_text() == "ours job-a"
