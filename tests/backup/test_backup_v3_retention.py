"""Version 3 retention (keep daily/weekly/monthly), repacking prunes, and the CLI."""

from __future__ import annotations

import io
import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.backup import engine, service, snapshots
from app.backup.keys import format_key
from app.cli import main
from app.store import Store
from tests.backup.conftest import add_message
from tests.backup.test_backup_v3 import KEY, _bodies, _Crash, _crash_at, _snapshot
from tests.store.conftest import protector

NS = 1_000_000_000


def _at(year: int, month: int, day: int, hour: int = 12) -> int:
    return int(datetime(year, month, day, hour, tzinfo=UTC).timestamp()) * NS


def test_keep_rules_keep_the_newest_of_each_period_as_restic_does() -> None:
    # Two snapshots a day over 40 days (2026-01-01 is a Thursday), newest last.
    start = datetime(2026, 1, 1, 9, tzinfo=UTC)
    times = []
    for day in range(40):
        for hour in (0, 8):
            when = start + timedelta(days=day, hours=hour)
            times.append(int(when.timestamp()) * NS)
    newest = max(times)

    def kept(**rule: int) -> set[int]:
        return snapshots.kept_times(times, snapshots.Retention(**rule), UTC)

    assert kept(last=0) == {newest}  # the newest always stays
    assert kept(last=3) == set(sorted(times)[-3:])
    daily = kept(last=1, daily=3)
    # The evening snapshot of each of the 3 newest days, nothing older.
    assert sorted(daily) == [t for t in sorted(times) if t >= _at(2026, 2, 7, 0)][1::2]
    weekly = kept(last=1, weekly=2)
    # 2026-02-09 (Monday) starts the newest ISO week; the week before ends on the 8th.
    assert sorted(weekly) == [_at(2026, 2, 8, 17), newest]
    monthly = kept(last=1, monthly=5)
    assert sorted(monthly) == [_at(2026, 1, 31, 17), newest]  # only 2 months have any
    union = kept(last=2, daily=3, monthly=2)
    assert union == kept(last=2) | daily | monthly
    with pytest.raises(ValueError):
        snapshots.Retention(daily=-1)


def _write(store: Store, profile: Path, folder: Path, when: int, **kwargs: object) -> Path:
    return _snapshot(store, profile, folder, clock=lambda: when, **kwargs)


def test_a_prune_by_days_and_weeks_keeps_those_snapshots_and_they_restore(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    made = {}
    # One backup a day for 15 days, from Monday 2026-03-02, each with a new message.
    for day in range(15):
        when = _at(2026, 3, 2) + day * 86_400 * NS
        add_message(store, f"day {day}")
        made[when] = _write(store, profile, folder, when, keep=100)
    report = snapshots.prune(
        folder, KEY, retention=snapshots.Retention(last=1, daily=3, weekly=3), tz=UTC
    )
    days = [_at(2026, 3, 16), _at(2026, 3, 15), _at(2026, 3, 14)]
    # Sundays end the ISO weeks of 2026-03-02 and 2026-03-09.
    weeks = [_at(2026, 3, 8), _at(2026, 3, 15)]
    repo = snapshots.Repository.for_key(folder, KEY)
    left = {snapshots.read_header(path).created_ns for path in repo.snapshot_paths()}
    assert left == set(days) | set(weeks)
    assert report.snapshots == 15 - len(left)
    listed = engine.list_backups(folder)
    assert [info.created_ns for info in listed] == sorted(left, reverse=True)
    oldest = made[_at(2026, 3, 8)]
    engine.verify_backup(oldest, KEY)
    target = tmp_path / "restored"
    engine.restore_backup(oldest, KEY, target, protector())
    bodies = _bodies(target)
    assert "day 6" in bodies and "day 7" not in bodies


def _mostly_unused_pack(store: Store, profile: Path, folder: Path) -> tuple[Path, bytes]:
    """A snapshot whose attachments' pack (the store's pages have packs of their
    own) is then mostly a file the next snapshot lacks."""
    big = profile / "attachments" / "big.bin"
    big.write_bytes(os.urandom(3_000_000))
    _write(store, profile, folder, _at(2026, 4, 1), keep=100)
    repo = snapshots.Repository.for_key(folder, KEY)
    first_pack = max(repo.pack_ids(), key=lambda pack: repo.pack_path(pack).stat().st_size)
    big.unlink()
    add_message(store, "after the big file went")
    second = _write(store, profile, folder, _at(2026, 4, 2), keep=100)
    return second, first_pack


def test_a_prune_repacks_a_mostly_unused_pack_and_the_space_comes_back(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    second, first_pack = _mostly_unused_pack(store, profile, folder)
    repo = snapshots.Repository.of_snapshot(second)
    packs_before = sum(repo.pack_path(p).stat().st_size for p in repo.pack_ids())
    report = snapshots.prune(folder, KEY, keep=1)
    assert report.snapshots == 1 and report.repacked == 1
    assert first_pack not in repo.pack_ids()
    packs_after = sum(repo.pack_path(p).stat().st_size for p in repo.pack_ids())
    assert packs_before - packs_after > 2_900_000, (packs_before, packs_after)
    assert report.freed > 2_900_000
    index = snapshots.load_index(repo, KEY)
    assert repo.pack_ids() == {p.pack_id for packs in index.files.values() for p in packs}
    engine.verify_backup(second, KEY)
    target = tmp_path / "restored"
    engine.restore_backup(second, KEY, target, protector())
    assert "after the big file went" in _bodies(target)
    assert (target / "attachments" / "a1.bin").read_bytes() == (
        profile / "attachments" / "a1.bin"
    ).read_bytes()
    # Nothing left to repack: a second prune writes and deletes nothing.
    steps: list[str] = []
    again = snapshots.prune(folder, KEY, keep=1, checkpoint=steps.append)
    assert again == snapshots.PruneReport(0, 0, 0, 0) and steps == []


def test_a_repacking_prune_killed_after_any_write_leaves_the_kept_snapshot_whole(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    template = tmp_path / "template"
    second, _first_pack = _mostly_unused_pack(store, profile, template)
    steps: list[str] = []
    dry = tmp_path / "dry"
    shutil.copytree(template, dry)
    snapshots.prune(dry, KEY, keep=1, checkpoint=steps.append)
    # Delete the old snapshot, write a pack, its index, delete the old index and packs.
    # (a pack's checkpoint names its 2-hex subfolder of data/)
    assert any(s.startswith("wrote") and "index" not in s for s in steps), steps
    assert len(steps) >= 5
    relative = second.relative_to(template)
    for number in range(1, len(steps) + 1):
        folder = tmp_path / f"crash-{number}"
        shutil.copytree(template, folder)
        with pytest.raises(_Crash):
            snapshots.prune(folder, KEY, keep=1, checkpoint=_crash_at(number))
        engine.verify_backup(folder / relative, KEY)
        # The next prune finishes the work: no pack left that no index names.
        snapshots.prune(folder, KEY, keep=1)
        repo = snapshots.Repository.of_snapshot(folder / relative)
        index = snapshots.load_index(repo, KEY)
        assert repo.pack_ids() == {p.pack_id for packs in index.files.values() for p in packs}
        assert len(repo.index_paths()) == 1
        engine.verify_backup(folder / relative, KEY)
    target = tmp_path / "restored"
    engine.restore_backup(tmp_path / f"crash-{len(steps)}" / relative, KEY, target, protector())
    assert "after the big file went" in _bodies(target)


def _cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *argv: str, stdin: str = ""
) -> tuple[int, str, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_the_cli_lists_and_prunes_with_keep_rules(
    full_store: tuple[Store, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    for day in range(4):
        add_message(store, f"cli day {day}")
        _write(store, profile, folder, _at(2026, 5, 1 + day), keep=100)
    key = format_key(KEY)
    code, out, _err = _cli(monkeypatch, capsys, "backup", "list", "--folder", str(folder))
    assert code == 0
    rows = out.splitlines()
    assert rows[0].split() == ["date", "added", "total", "name"]
    assert len(rows) == 5 and rows[1].split()[0] == "2026-05-04"
    code, out, err = _cli(
        monkeypatch, capsys, "backup", "prune", "--folder", str(folder), "--key", key,
        "--keep-last", "2", "--dry-run",
    )  # fmt: skip
    assert code == 0, err
    assert [line.split()[0] for line in out.splitlines()[:4]] == [
        "keep", "keep", "delete", "delete",
    ]  # fmt: skip
    assert len(engine.list_backups(folder)) == 4
    code, out, err = _cli(
        monkeypatch, capsys, "backup", "prune", "--folder", str(folder), "--key", key,
        "--keep-last", "2",
    )  # fmt: skip
    assert code == 0, err
    assert "deleted 2 snapshot(s)" in out
    assert len(engine.list_backups(folder)) == 2
    # Usage errors exit 2, as --help says.
    code, _out, err = _cli(
        monkeypatch, capsys, "backup", "prune", "--folder", str(folder), "--key", key
    )
    assert code == 2 and "--keep-last" in err
    with pytest.raises(SystemExit) as exited:
        _cli(monkeypatch, capsys, "backup", "prune", "--help")
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    assert "--keep-daily" in help_text and "exit codes:" in help_text


def test_settings_keep_rules_round_trip_and_drive_the_next_backup(
    full_store: tuple[Store, Path], tmp_path: Path
) -> None:
    store, profile = full_store
    folder = tmp_path / "cloud"
    service.set_up_with_key(store, folder, schedule="daily", keep=1, key=KEY)
    service.set_retention(store, snapshots.Retention(last=1, daily=0, weekly=0, monthly=3))
    assert service.retention(store) == snapshots.Retention(last=1, monthly=3)
    # Three months of 2020, two backups each, then the app's own "Back up now"
    # (today): it keeps itself and the newest of the two months before.
    for month in (1, 2, 3):
        for day in (10, 20):
            _write(store, profile, folder, _at(2020, month, day), keep=100)
    service.back_up_now(store, profile)
    created = sorted(i.created_ns for i in engine.list_backups(folder))
    # Local time moves noon UTC by hours, never to another day.
    assert created[:2] == [_at(2020, 2, 20), _at(2020, 3, 20)]
    assert len(created) == 3
