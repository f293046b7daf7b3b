"""``shaperctl profiles retake``: a finished profile's floors timed slow, timed again."""

import collections
import json
import shutil
import statistics

import pytest
from click.testing import CliRunner

from cli.main import main
from shaper_deploy.errors import ProfileError
from shaper_deploy.io import sha256_file
from shaper_deploy.profiling.analysis import group_slowdowns, point_key, slow_floors
from shaper_deploy.profiling.folder import MEASUREMENTS, read_measurements
from shaper_deploy.profiling.predictor import DeviceProfile, fit_profile
from shaper_deploy.profiling.profile import RETAKE_LOOKS, calm_look_items, retake_profile

from .conftest import TINY_SPACE, fast_protocol
from .test_profiling import _look

SLOW = 20.0  # the slow stretch made by hand: every int8 group 20x slower, floors and all


def _slowed(tiny_profile, out):
    """``tiny_profile`` as if fp32 had been timed on a calm machine and int8 in one slow
    stretch: every fp32 group's reference at its size's median time and its sentinel at the
    sentinel's, every int8 group's floors and reference 20x and its sentinel 20x that, the
    checksum signed again (a profile the slow-floors gate turns away on int8 alone); the int8
    points it then counts slow."""
    shutil.copytree(tiny_profile, out)
    lines = [json.loads(line) for line in (out / MEASUREMENTS).read_text().splitlines()]
    sentinel = statistics.median(r["sentinel_ms"] for r in lines)
    refs = collections.defaultdict(list)
    for r in lines:
        refs[r["precision"], r["batch"], r["seq_len"]].append(r["reference_ms"])
    for r in lines:
        r["sentinel_ms"] = sentinel
        r["reference_ms"] = statistics.median(refs[r["precision"], r["batch"], r["seq_len"]])
        if r["precision"] == "int8":
            for key in ("median_ms", "p90_ms", "reference_ms", "sentinel_ms"):
                r[key] *= SLOW
            r["round_medians"] = [v * SLOW for v in r["round_medians"]]
            r["run_ms"] = {k: v * SLOW for k, v in r["run_ms"].items()}
    (out / MEASUREMENTS).write_text("".join(json.dumps(r) + "\n" for r in lines))
    header = json.loads((out / "profile.json").read_text())
    header["files"][MEASUREMENTS] = sha256_file(out / MEASUREMENTS)
    (out / "profile.json").write_text(json.dumps(header))
    fit_profile(out)  # counted again, as a fit counts them
    assert "max_slow_floors" in DeviceProfile.load(out).trust["missed"]
    assert slow_floors(lines, "fp32")["slow"] == 0
    return {point_key(r) for r in lines if r["precision"] == "int8"}


def test_a_retake_takes_what_the_slow_floors_gate_counts_not_the_looks_rule():
    """A calm look takes what ran over 1.1x by the larger of the reference's and the
    sentinel's slowdown; a retake what the slow-floors count counts, by each size's own
    reference: where the sentinel ran 1.5x and this size's reference 1.05x its calm time,
    the look takes the point and the retake does not."""
    a, b, big, never = "16,36,8", "8,8,8", (1, 16), (4, 16)

    def rec(shape, size, group, floor, ref, sentinel):
        return {**_look(shape, size, 0, group, floor, ref), "sentinel_ms": sentinel}

    records = ([rec(b, big, g, 1.0, 10.0, 1.0) for g in range(6)]  # a calm stretch
               + [rec(a, big, 6, 4.0, 10.5, 1.5),  # the sentinel 1.5x, this size 1.05x
                  rec(a, never, 8, 6.0, 20.0, 1.4), rec(b, never, 9, 2.0, 20.0, 1.45)])
    looks = fast_protocol(precisions=("fp32",), sweeps=1, calm_looks=2, retakes=1)

    def taken(look):
        return {(",".join(map(str, i[2].widths)), w)
                for i in calm_look_items(records, looks, TINY_SPACE, look) for w in i[3]}

    assert taken(0) == {(a, big), (a, never), (b, never)}  # the look: the larger slowdown
    assert taken(1) == {(a, never), (b, never)}  # the retake: what slow_floors counts
    assert slow_floors(records, "fp32")["slow"] == 2
    assert group_slowdowns(records)[("main", 0, 6, False, "fp32", *big)] == 1.5


def test_a_retake_times_the_slow_floors_again_resumes_and_refuses(tiny_profile, tmp_path,
                                                                  monkeypatch):
    import shaper_deploy.profiling.profile as prof

    out = tmp_path / "slowed"
    slow = _slowed(tiny_profile, out)
    before = read_measurements(out)
    waits = []
    real_wait = prof.wait_for_calm

    def recorded(check, may_wait, note, against):  # one check: a test does not wait
        waits.append((check(), may_wait(), against))
        return real_wait(check, lambda: False, note, against)

    monkeypatch.setattr(prof, "wait_for_calm", recorded)

    def stop_in_the_retake(message):
        if message.startswith("[") and "retake, int8" in message:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        retake_profile(out, minutes=0.5, progress=stop_in_the_retake)
    with pytest.raises(ProfileError, match="finish its retake with shaperctl profiles retake"):
        DeviceProfile.load(out)
    # resumed: the rest of the first look; then, within the 30 s, more looks at what is still
    # slow (the retaken floors are real timings, slow or not as the machine ran)
    report = retake_profile(out, minutes=0.5)
    assert report["slow_before"] is None and report["fit_only"] is False
    fit_profile(out)
    p = DeviceProfile.load(out)
    records = read_measurements(out)
    looks = [x["look"] for x in report["looks"]]
    look = p.header.protocol.sweeps  # the first retake (the profile had no calm looks)
    assert looks == list(range(look, look + len(looks))) and len(looks) <= RETAKE_LOOKS
    retaken = [r for r in records if r["sweep"] == look]
    # exactly the int8 floors timed slow, each once (a noisy one also timed again at once)
    assert {point_key(r) for r in retaken} == slow
    assert len([r for r in retaken if not r["retry"]]) == len(slow)
    assert records[:len(before)] == before  # nothing else measured, nothing rewritten
    assert p.header.protocol.retakes == p.header.protocol.calm_looks == len(looks)
    assert [x["look"] for x in p.header.summary["retakes"]] == looks
    assert p.header.summary["retakes"][0]["measurements"] == len(retaken)
    assert {r["sweep"] for r in records[len(before):]} == set(looks)
    # a retake waits (for calm by its size's own reference) though the profile did not
    assert p.header.protocol.calm_wait is False
    assert waits and all(ratio > 0 and may and against == "its calm time"
                         for ratio, may, against in waits)
    # the 20x floors are no longer any point's lowest: the retake's are
    floors = {}
    for r in records:
        k = point_key(r)
        if r["precision"] == "int8" and (k not in floors or r["median_ms"] < floors[k][0]):
            floors[k] = (r["median_ms"], r["sweep"])
    assert {s for _, s in floors.values()} <= set(looks)
    # refusals: another machine's profile, an unfinished one, a bad time
    other = tmp_path / "other"
    shutil.copytree(tiny_profile, other)
    header = json.loads((other / "profile.json").read_text())
    header["fingerprint"]["cpu_model"] = "Another CPU"
    (other / "profile.json").write_text(json.dumps(header))
    with pytest.raises(ProfileError, match=r"measured on another machine \(cpu_model"):
        retake_profile(other)
    header = json.loads((tiny_profile / "profile.json").read_text())
    header["status"] = "measuring"
    (other / "profile.json").write_text(json.dumps(header))
    with pytest.raises(ProfileError, match="is not finished: finish it by running the same"):
        retake_profile(other)
    with pytest.raises(ProfileError, match="--minutes must be between 0.5 and 1440"):
        retake_profile(out, minutes=0.1)


def test_a_profile_with_no_floor_timed_slow_is_left_as_it_is(tiny_profile, tmp_path):
    out = tmp_path / "calm"
    shutil.copytree(tiny_profile, out)
    lines = [json.loads(line) for line in (out / MEASUREMENTS).read_text().splitlines()]
    for r in lines:  # every group as calm as the next
        r["reference_ms"] = r["sentinel_ms"] = 1.0
    (out / MEASUREMENTS).write_text("".join(json.dumps(r) + "\n" for r in lines))
    header = json.loads((out / "profile.json").read_text())
    header["files"][MEASUREMENTS] = sha256_file(out / MEASUREMENTS)
    (out / "profile.json").write_text(json.dumps(header))
    fit_profile(out)
    files = {f.name: f.read_bytes() for f in out.iterdir()}
    shown = CliRunner().invoke(main, ["profiles", "show", str(out), "--json"]).stdout
    assert json.loads(shown)["retake"] is None  # nothing advised
    said = CliRunner().invoke(main, ["profiles", "retake", str(out)])
    assert said.exit_code == 0, said.output
    assert "nothing: no floor was timed while the machine ran slow" in said.stdout
    assert {f.name: f.read_bytes() for f in out.iterdir()} == files


def test_profiles_retake_command_says_before_and_after(tiny_profile, tmp_path, monkeypatch):
    import shaper_deploy.profiling.profile as prof

    out = tmp_path / "slowed"
    slow = _slowed(tiny_profile, out)
    real_wait = prof.wait_for_calm
    monkeypatch.setattr(prof, "wait_for_calm",
                        lambda check, may_wait, note, against: real_wait(
                            check, lambda: False, note, against))
    runner = CliRunner()
    shown = json.loads(runner.invoke(main, ["profiles", "show", str(out), "--json"]).stdout)
    counted = slow_floors(read_measurements(out), "int8")["slow"]  # the gate's count: main only
    assert shown["retake"] == f"retake its {counted} floor(s) timed while the machine ran " \
        f"slow, each once it runs calm: shaperctl profiles retake {out}"  # what the demo reads
    done = runner.invoke(main, ["profiles", "retake", str(out), "--minutes", "0.5", "--json"])
    assert done.exit_code == 0, done.output
    d = json.loads(done.stdout)
    assert d["retake"]["points"]["int8"] == len(slow) and "fp32" not in d["retake"]["points"]
    assert d["retake"]["minutes"] == 0.5 and d["retake"]["priced_s"] > 0
    int8 = d["before"]["precisions"]["int8"]["slow_floors"]
    assert int8["slow"] == int8["points"] and "max_slow_floors" in d["before"]["trust"]["missed"]
    assert d["after"]["trust"] == DeviceProfile.load(out).trust
    assert "retaking" in done.stderr  # what it retakes and its price, from the first seconds
    # the text: before -> after for each figure that judges the profile
    from cli.profile import _retake_text

    shown = _retake_text(d)  # what the command prints without --json
    n = int8["points"]
    assert f"int8 {n}/{n} -> " in shown and "machine now" in shown
    looks = {x["look"]: x["timed"] for x in d["retake"]["looks"]}  # one check per group x size
    groups = {(r["sweep"], r["group"], r["batch"], r["seq_len"]) for r in read_measurements(out)
              if r.get("sweep", 0) in looks}
    sizes, calm = (sum(t[k] for t in looks.values()) for k in ("sizes", "calm"))
    assert sizes == sum(t["checked"] for t in looks.values()) == len(groups) and calm <= sizes
    assert f"{calm} of {sizes} group x size measurement(s)" in shown
    verdict = shown.split("\ntrust", 1)[1]  # before -> after
    assert f"int8 {n} of {n} floors timed while the machine ran slow" in verdict.split(" -> ")[0]
    assert "look(s) at floors timed slow" in runner.invoke(
        main, ["profiles", "show", str(out)]).stdout
    missing = runner.invoke(main, ["profiles", "retake", str(tmp_path / "none")])
    assert missing.exit_code == 1 and "is not a profile" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1


def test_a_retake_says_how_many_of_its_sizes_it_timed_calm():
    """A retake whose window ran out in a slow stretch says so: what it timed slow, or without
    a check, may still count slow (session 54: 9 of a transfer's 31 sizes, int8 at 1.4-2.3x)."""
    from cli.profile import _retake_calm_line
    from shaper_deploy.profiling.profile import wait_counts

    def rec(sweep, group, gate):
        return {"sweep": sweep, "group": group, "precision": "int8", "batch": 1,
                "seq_len": 16, **({"calm_wait": gate} if gate else {})}

    calm, slow = {"ratio": 1.04, "waited_s": 3.0, "checks": 4}, {"ratio": 1.7,
                                                                 "waited_s": 1.0, "checks": 2}
    records = [rec(3, 10, calm), rec(3, 10, calm), rec(3, 11, slow), rec(3, 12, None),
               rec(2, 9, calm)]  # a group's two records (a retry) count once; look 2 apart
    timed = wait_counts(records, {3})
    assert timed == {"sizes": 3, "checked": 2, "calm": 1, "seconds": 4.0}
    line = _retake_calm_line(timed["sizes"], timed["calm"])
    assert line.startswith("1 of 3 group x size") and "the other 2" in line
    assert "retake again" in line
    calm_look = wait_counts(records, {2})
    assert "the other" not in _retake_calm_line(calm_look["sizes"], calm_look["calm"])


def test_a_retake_says_how_fast_the_machine_ran_against_the_profiles_calm_time():
    """The median of a retake's references over their sizes' calm times in the profile: a
    machine faster now than in the profile's calm moments has moved to another state, and the
    command says to make a new profile; one still slow, to retake later."""
    from cli.profile import _retake_speed_line
    from shaper_deploy.profiling.profile import retake_speed

    a, big = "16,36,8", (1, 16)

    def rec(sweep, group, ref):
        return {**_look(a, big, sweep, group, 1.0, ref), "sentinel_ms": 1.0}

    profile = [rec(0, g, 10.0) for g in range(6)]  # calm: the reference's calm time 10 ms
    faster = profile + [rec(1, 6, 9.0), rec(1, 7, 9.2), rec(2, 8, 9.4)]
    assert retake_speed(faster, [1]) == {"median": 0.91, "sizes": 2, "of": 2}
    assert retake_speed(faster, [1, 2])["median"] == 0.92
    assert retake_speed(profile, [1]) == {"median": None, "sizes": 0, "of": 0}
    elsewhere = faster + [{**rec(1, 9, 30.0), "batch": 4}]  # a size with no calm time
    assert retake_speed(elsewhere, [1]) == {"median": 0.91, "sizes": 2, "of": 3}

    def line(median):
        return _retake_speed_line({"median": median, "sizes": 2, "of": 3})
    assert "remake the profile" in line(0.92) and "found no calm moment" in line(1.2)
    # checks that found the machine calm while the reference ran slow: both said, no claim
    # that no calm moment was found
    both = _retake_speed_line({"median": 1.19, "sizes": 7, "of": 19}, calm=17)
    assert "found the machine calm before 17 of the 19" in both and "no calm moment" not in both
    assert "one round of the reference" in both
    assert "retake it again later" in both
    assert not any(w in line(1.0) for w in ("remake", "no calm"))
    assert "the median of 2 of the retake's 3 group x size measurements" in line(1.0)
    assert "not compared" in _retake_speed_line(None)  # a run that only fitted
