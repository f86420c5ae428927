"""The printed report: every figure of a bench run as plain-text tables, with warnings where the machine
did not hold still."""

from __future__ import annotations

from typing import Any

from livedigit.bench.ceiling import IDLE_BATCH, IDLE_PAUSE_S
from livedigit.bench.resources import describe_cpu

DISTURBED_PERCENT = 5.0
"""CPU (% of one core) used by processes other than the server and the bench above which a run is flagged."""

SPEED_CHANGE = 0.3
"""Relative change of the reference digit's time across a run above which the run is flagged."""


def format_report(report: dict[str, Any]) -> str:
    """The figures as plain-text tables."""
    lines: list[str] = [f"machine: {describe_cpu(report['machine'])}", ""] if report.get("machine") else []
    ceiling = report.get("ceiling")
    if ceiling:
        lines += [
            "model alone (this process, one thread, same frames):",
            f"  preprocess          {ceiling['preprocess_per_s']:>9.0f} /s",
            f"  runtime batch {ceiling['batch_size']:<4d}  {ceiling['runtime_batched_per_s']:>9.0f} /s",
            f"  runtime batch 1     {ceiling['runtime_single_per_s']:>9.0f} /s",
            f"  preprocess+runtime  {ceiling['ceiling_per_s']:>9.0f} /s batched, "
            f"{ceiling['ceiling_unbatched_per_s']:.0f} /s unbatched",
        ]
        if "preprocess_cpu_us_paused" in ceiling:
            lines.append(
                f"  preprocess cpu      {ceiling['preprocess_cpu_us']:>9.1f} us/frame back to back, "
                f"{ceiling['preprocess_cpu_us_paused']:.1f} us/frame {IDLE_BATCH} at a time every "
                f"{IDLE_PAUSE_S * 1000:.0f} ms (a worker at 100 clients)"
            )
        lines.append("")
    if report.get("runs"):
        lines += _runs_table(report["runs"], ceiling)
    if report.get("script"):
        lines += _script(report["script"])
    sweep = report.get("sweep")
    if sweep:
        for mode, data in sweep["modes"].items():
            lines += ["", f"sweep, {mode}:", *_runs_table(data["steps"], ceiling)]
            knee = data["knee"]
            lines.append(
                f"  knee: last good {knee['last_good']} clients, first over {knee['first_bad']} "
                f"({knee['reason'] or 'never within the sweep'})"
            )
        if sweep["ratio"] is not None:
            bound = " (at least; batching never reached the knee)" if sweep["ratio_is_lower_bound"] else ""
            lines.append(f"knee ratio batched/unbatched: {sweep['ratio']}{bound}")
    return "\n".join(lines)


def _script(script: dict[str, Any]) -> list[str]:
    """The figures of ``--script``: throughputs, the drawers' runs, and the ratios between them."""
    ceiling, ratio = script["ceiling"], script["ratios"]
    lone, lifted, beside = script["lone_default"], script["lone_lifted"], script["script_beside_drawers"]

    def share(value: float | None) -> str:
        return "-" if value is None else f"{value:.1%}"

    def line(what: str, run: dict[str, Any]) -> str:
        cpu = run.get("client_cpu_us_per_image")
        own = "" if cpu is None else f"  (script process: {run['client_cpu_percent']}% CPU, {cpu} us per image)"
        return f"  {what:<49}{run['images_per_s']:>8.0f} /s  {run['outcomes']}{own}"

    return [
        f"a script classifying {script['count']} {script['images']} images, over and over:",
        f"  model alone (preprocess+runtime, this process)  {ceiling['ceiling_per_s']:>8.0f} /s",
        line("script alone, default settings", lone),
        line("script alone, per-client limits lifted", lifted),
        line("script beside the drawers", beside),
        "",
        *_runs_table([script["drawers_alone"], script["drawers_with_script"]], None),
        "",
        f"  default / lifted: {share(ratio['default_over_lifted'])};"
        f" default / model alone: {share(ratio['default_over_ceiling'])}",
        f"  drawers' p99: {ratio['drawers_p99_alone_ms']} ms alone, {ratio['drawers_p99_with_script_ms']} ms with"
        f" the script (+{ratio['drawers_p99_added_ms']} ms)",
        f"  script beside the drawers / (script alone - drawers' predictions/s):"
        f" {share(ratio['script_over_capacity_left'])}; / script alone: {share(ratio['script_over_lone'])}",
    ]


FLOOR_RUN = "floor"
"""The name of ``--floor``'s run: every other run's CPU per answered frame is also given beyond it."""


def _runs_table(runs: list[dict[str, Any]], ceiling: dict[str, Any] | None) -> list[str]:
    header = (
        f"{'run':<16}{'clients':>8}{'snap/s off':>11}{'snap/s ok':>10}{'sub/s':>7}"
        f"{'live p50':>9}{'p95':>7}{'p99':>7}{'max':>8}{'submit p99':>11}{'dropped':>9}{'errors':>7}"
        f"{'batch':>7}{'cpu%':>6}{'rss MB':>7}{'pss MB':>7}{'acc':>6}"
    )
    lines = [header]
    floor = next(
        (run["cpu_per_answer_ms"]["total"] for run in runs if run["name"] == FLOOR_RUN and run["cpu_per_answer_ms"]),
        None,
    )
    for run in runs:
        name = run["name"] + (" paced" if run.get("paced") else "")
        snap, sub, server = run["snapshots"], run["submits"], run["server"]
        live = snap["latency_ms"]
        errors = (
            sum(snap["errors"].values())
            + sum(sub["errors"].values())
            + snap["lost"]
            + sub["lost"]
            + sum(run["connection_errors"].values())
        )
        batches = run["batch_sizes"]
        lines.append(
            f"{name:<16}{run['clients']:>8}{snap['offered_per_s']:>11.0f}{snap['achieved_per_s']:>10.0f}"
            f"{sub['achieved_per_s']:>7.1f}{_ms(live['p50']):>9}{_ms(live['p95']):>7}{_ms(live['p99']):>7}"
            f"{_ms(live['max']):>8}{_ms(sub['latency_ms']['p99']):>11}{snap['dropped_share']:>9.1%}{errors:>7}"
            f"{_num(batches and batches['mean'], '.1f'):>7}{_num(server['cpu_percent']):>6}"
            f"{_num(server['rss_mb_max']):>7}{_num(server['pss_mb_max']):>7}{_num(sub['accuracy'], '.3f'):>6}"
        )
    for run in runs:
        detail = []
        if run["snapshots"]["dropped"]:
            detail.append(f"dropped {run['snapshots']['dropped']}")
        if run["snapshots"]["errors"] or run["submits"]["errors"]:
            detail.append(f"errors {run['snapshots']['errors']} {run['submits']['errors']}")
        if run["connection_errors"]:
            detail.append(f"connections {run['connection_errors']}")
        if batches := run["batch_sizes"]:
            detail.append(f"batches {batches['buckets']}")
            if batches["inline"] is not None and batches["batches"]:
                detail.append(f"{batches['inline'] / batches['batches']:.0%} of them scored on the event loop")
        if run.get("server_latency_ms"):
            inside = run["server_latency_ms"]
            detail.append(
                f"server-side prediction latency p50 {inside['p50']} ms, p99 {inside['p99']} ms, "
                f"{inside['over_50ms']} over 50 ms"
            )
        machine = run["server"].get("machine", {})
        detail.append(
            f"server event loop cpu {run['server'].get('event_loop_cpu_percent', '-')}%, "
            f"bench client cpu {run['server']['bench_client_cpu_percent']}%, "
            f"lag p99 {run['client_lag_ms']['p99']} ms, other processes {machine.get('others_percent', '-')}%"
            f", steal {machine.get('steal_percent', '-')}%"
        )
        if run["server"].get("ready_s") is not None:
            detail.append(f"server ready {run['server']['ready_s']} s after its process started")
        cpu = run.get("cpu_per_answer_ms")
        if cpu:
            detail.append(_cpu_detail(cpu))
            if floor is not None and cpu["total"] is not None and run["name"] != FLOOR_RUN:
                detail.append(f"{cpu['total'] - floor:.3f} ms of it beyond the stack's floor ({floor:.3f} ms)")
        if ceiling:
            detail.append(
                f"predictions/s {run['predictions_per_s']} = "
                f"{run['predictions_per_s'] / ceiling['ceiling_per_s']:.1%} of the model-alone ceiling"
            )
        speed = run.get("reference_digit_us")
        if speed:
            detail.append(f"reference digit {speed['before']} us before, {speed['after']} us after")
        lines.append(f"  {run['name']}: " + "; ".join(detail))
        if speed and abs(speed["after"] - speed["before"]) > SPEED_CHANGE * min(speed["before"], speed["after"]):
            lines.append(
                f"  warning: this machine's speed changed during {run['name']} (a reference digit took "
                f"{speed['before']} us before and {speed['after']} us after); compare its figures "
                f"with care"
            )
        if (run.get("bench") or {}).get("bottleneck"):
            lines.append(
                f"  warning: the bench itself may have been the bottleneck of {run['name']}: "
                f"{run['bench']['bottleneck']} ({run['bench']['cpu_us_per_message']} us of its CPU per message); "
                f"its figures may describe the bench rather than the server"
            )
        disturbed = max(machine.get("others_percent", 0.0), machine.get("steal_percent", 0.0))
        if disturbed > DISTURBED_PERCENT:
            lines.append(
                f"  warning: other processes or the hypervisor took {disturbed}% of a core during "
                f"{run['name']}; its figures do not describe this server alone"
            )
    return lines


def _cpu_detail(cpu: dict[str, Any]) -> str:
    """Server CPU per answered frame: in all, by thread (busiest first), and by batcher stage."""
    parts = [f"server cpu per answered frame {_num(cpu['total'], '.3f')} ms"]
    if cpu["threads"]:
        busiest = sorted(cpu["threads"].items(), key=lambda item: -item[1])
        parts.append("by thread " + ", ".join(f"{name} {ms:.3f}" for name, ms in busiest if ms > 0))
    if cpu["stages"]:
        parts.append(
            "by stage (cpu of its thread) "
            + ", ".join(
                f"{stage} {_num(figures['ms_per_answer'], '.3f')} ({_num(figures['ms_per_image'], '.3f')} ms/image)"
                for stage, figures in cpu["stages"].items()
            )
        )
    return "; ".join(parts)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _num(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)
