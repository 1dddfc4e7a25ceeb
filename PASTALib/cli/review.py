"""``pasta review``: blinded realism reader studies (create, add-reader, rate, status, export, analyze, verify)."""

from __future__ import annotations

import argparse
import json
import sys
import time

from PASTALib import limits
from PASTALib.cli.args import bounded, seed
from PASTALib.progress import progress_line


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    group = subparsers.add_parser("review", help="blinded realism reader studies (real vs synthetic lesions)")
    commands = group.add_subparsers(dest="command", metavar="COMMAND")

    create = commands.add_parser("create", help="balance real:synthetic 1:1 per type, anonymise, write study + key")
    create.add_argument("study", help="new study folder (readers get this)")
    create.add_argument("--real-csv", action="append", default=[], metavar="CSV",
                        help="real cases: columns image, mask, lesion_type[, report][, lesion_values]")
    create.add_argument("--synthetic", action="append", default=[], metavar="DIR",
                        help="folder searched for synthesizer cases: `pasta synth generate` output (img.nii.gz, label.nii.gz, report.json; ct.nii.gz also read)")
    create.add_argument("--key", help="key folder, outside the study (default: STUDY_key beside it)")
    create.add_argument("--seed", type=seed, default=0, help="seed for balancing and case ids")
    create.add_argument("--spacing", type=bounded(limits.REVIEW_SPACING_MM), default=1.0, help="common isotropic spacing in mm")
    create.add_argument("--fov", type=bounded(limits.REVIEW_FOV_MM), default=128.0, help="lesion-centred cube edge in mm (0 = whole CT; its size then leaks)")
    create.add_argument("--allow-changes", action="store_true", help="readers may change answers")
    create.add_argument("--no-attributes", action="store_true", help="ask realism only, no report attribute questions")
    create.add_argument("--allow-report-imbalance", action="store_true",
                        help="create even when report presence differs between real and synthetic cases")
    create.set_defaults(func=_create)

    reader = commands.add_parser("add-reader", help="register a reader (gets a stable shuffled order)")
    reader.add_argument("study")
    reader.add_argument("reader")
    reader.add_argument("--seed", type=seed, help="shuffle seed (default: derived from study id and name)")
    reader.set_defaults(func=_add_reader)

    rate = commands.add_parser("rate", help="answer cases: interactive prompt, or --answers CSV")
    rate.add_argument("study")
    rate.add_argument("reader")
    rate.add_argument("--answers", metavar="FILE", help="scripted answers, checked whole before any is recorded: CSV with "
                      "columns case_id, realism[, shape..invasion][, reason][, seconds], or a .json list of such objects")
    rate.add_argument("--pace", type=bounded(limits.REVIEW_PACE_S), default=0.0, help="seconds to wait between scripted answers")
    rate.set_defaults(func=_rate)

    status = commands.add_parser("status", help="progress of every reader")
    status.add_argument("study")
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=_status)

    export = commands.add_parser("export", help="answers as CSV (unblinded with --key)")
    export.add_argument("study")
    export.add_argument("csv")
    export.add_argument("--key")
    export.set_defaults(func=_export)

    analyze = commands.add_parser("analyze", help="statistics, HTML report and JSON (needs the key)")
    analyze.add_argument("study")
    analyze.add_argument("--key", required=True)
    analyze.add_argument("--out", required=True, help="folder for report.html, results.json, answers.csv")
    analyze.add_argument("--threshold", type=bounded(limits.REVIEW_THRESHOLD), default=4, help="rating >= this calls a case real")
    analyze.add_argument("--margin", type=bounded(limits.REVIEW_MARGIN), default=0.5, help="TOST equivalence margin (rating points)")
    analyze.add_argument("--n-boot", type=bounded(limits.REVIEW_N_BOOT), default=1000, help="bootstrap replicates (per-reader AUC, kappa and alpha CIs)")
    analyze.add_argument("--seed", type=seed, default=0)
    analyze.set_defaults(func=_analyze)

    verify = commands.add_parser("verify", help="check every study file against the checksums made at creation")
    verify.add_argument("study")
    verify.add_argument("--key", help="also check the manifest against the key")
    verify.set_defaults(func=_verify)
    group.set_defaults(func=None)


def _create(args: argparse.Namespace) -> int:
    from PASTALib.io.outputs import check_outputs
    from PASTALib.review import StudySettings, create_study, find_synthetic_cases, read_real_cases_csv

    # Options first: a bad number is reported before any input is read.
    settings = StudySettings(seed=args.seed, spacing_mm=args.spacing, fov_mm=args.fov or None,
                             allow_changes=args.allow_changes, ask_attributes=not args.no_attributes,
                             allow_report_imbalance=args.allow_report_imbalance)
    check_outputs([*args.real_csv, *args.synthetic], folders=[args.study, args.key])
    real = [c for path in args.real_csv for c in read_real_cases_csv(path)]
    synthetic = find_synthetic_cases(args.synthetic)
    created = create_study(real, synthetic, args.study, args.key, settings,
                           progress=lambda n, total: progress_line(f"{n}/{total}"))
    for stale in created.removed_partials:
        print(f"removed {stale} (left by an interrupted `pasta review create`)")
    print(f"study: {created.study_dir} ({len(created.case_ids)} cases)")
    print(f"key (keep away from readers): {created.key_dir}")
    for lesion_type, counts in created.counts.items():
        print(f"  {lesion_type}: {counts['real']} real + {counts['synthetic']} synthetic")
    for item in created.dropped:
        print(f"  dropped {item['origin']} {item['image']}: {item['reason']}")
    for warning in created.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def _add_reader(args: argparse.Namespace) -> int:
    from PASTALib.review import add_reader

    from PASTALib.review.db import reader_name, shown

    seed = add_reader(args.study, args.reader, args.seed)
    print(f"added reader '{shown(reader_name(args.reader))}' (shuffle seed {seed})")
    return 0


def _rate(args: argparse.Namespace) -> int:
    from PASTALib.review import ATTRIBUTES, ReaderSession
    from PASTALib.review.session import read_answers

    pace = args.pace  # range checked by its argparse type
    with ReaderSession(args.study, args.reader) as session:
        # The whole file is checked before the first answer is recorded.
        answers = read_answers(args.answers, session.study) if args.answers else None
        done, total = session.progress()
        if done:
            print(f"resuming: {done} of {total} answered", flush=True)
        if answers is not None:
            return _rate_scripted(session, answers, pace, ATTRIBUTES)
        return _rate_interactive(session, ATTRIBUTES)


def _rate_scripted(session, answers: dict[str, dict], pace: float, attributes: tuple[str, ...]) -> int:
    view = session.resume()
    while view is not None:
        if view.answer is None:
            row = answers.get(view.case_id)
            if row is None:
                print(f"stopped: no answer for case {view.case_id} ({view.position} of {view.total}) in the answers file",
                      file=sys.stderr)
                return 1
            # Attribute ratings for questions this case does not ask are ignored (one table may cover all cases).
            attrs = {a: v for a, v in row["attributes"].items() if view.report and a in view.report}
            session.rate(view.case_id, row["realism"], attrs or None, row["reason"], row["seconds"])
            progress_line(f"{session.progress()[0]}/{view.total}")
            if pace:
                time.sleep(pace)
        view = session.next()
    print("all cases answered")
    return 0


def _ask(prompt: str) -> str:
    try:
        return input(prompt).strip().lower()
    except EOFError:
        return "q"


def _rate_interactive(session, attributes: tuple[str, ...]) -> int:
    from PASTALib.review import ReviewError

    print("Rate realism 1 (completely unrealistic) to 5 (indistinguishable from real). b = back, q = quit.")
    view = session.resume()
    while view is not None:
        paths = session.case_paths(view.case_id)
        print(f"\nCase {view.case_id}  ({view.position} of {view.total})  {view.lesion_type}\n  image: {paths.image}\n  mask:  {paths.mask}")
        if view.answer is not None:
            print(f"  your answer: realism {view.answer.realism}" + ("" if session.allow_changes else " (final in this study)"))
            if not session.allow_changes:
                key = _ask("  [Enter] next, b back, q quit: ")
                if key == "q":
                    break
                view = session.previous() if key == "b" else session.next()
                continue
        key = _ask("  realism 1-5: ")
        if key == "q":
            break
        if key == "b":
            view = session.previous()
            continue
        if key not in ("1", "2", "3", "4", "5"):
            print("  enter a whole number from 1 to 5, b (back) or q (quit)")
            continue
        attrs = {}
        for attribute in attributes:
            if view.report and attribute in view.report:
                value = _ask(f"  {attribute} '{view.report[attribute]}' accuracy 1-5 (Enter skips): ")
                while value and value not in ("1", "2", "3", "4", "5"):
                    value = _ask("    1-5, or Enter to skip: ")
                if value:
                    attrs[attribute] = value
        reason = input("  reason (optional): ").strip() if sys.stdin.isatty() else ""
        try:
            session.rate(view.case_id, key, attrs or None, reason or None)
        except ReviewError as exc:
            print(f"  {exc}")
            continue
        view = session.next()
    done, total = session.progress()
    print(f"{done} of {total} answered; run the same command to continue.")
    return 0


def _status(args: argparse.Namespace) -> int:
    from PASTALib.review import Study
    from PASTALib.review import db

    study = Study.open(args.study)
    conn = db.connect(study.db_path)
    try:
        readers = list(db.readers(conn))
        settings = db.settings(conn)
        answered = [(a.reader, a.case_id) for a in db.answers(conn)]
    finally:
        conn.close()
    cases = set(study.case_ids)
    progress = {r: [sum(1 for who, c in answered if who == r and c in cases), len(cases)] for r in readers}
    if args.json:
        print(json.dumps({"study_id": study.study_id, "n_cases": len(study.case_ids), "settings": settings,
                          "readers": progress}, indent=2))
    else:
        print(f"study {study.study_id}: {len(study.case_ids)} cases; answers changeable: {settings.get('allow_changes')}")
        for reader, (done, total) in progress.items():
            print(f"  {db.shown(reader)}: {done}/{total}")  # a name stored before names were checked stays escaped
        if not readers:
            print("  no readers yet: add one with `pasta review add-reader STUDY NAME`")
    return 0


def _export(args: argparse.Namespace) -> int:
    from PASTALib.review.export import export_csv

    print(export_csv(args.study, args.csv, args.key))
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from PASTALib.io.outputs import check_outputs
    from PASTALib.review.analysis import analyze

    check_outputs([args.study, args.key], folders=[args.out])
    results = analyze(args.study, args.key, args.out, threshold=args.threshold, margin=args.margin,
                      n_boot=args.n_boot, seed=args.seed)
    auc = results["all_readers"]["auc"]
    if auc["p_vs_null"] is not None:
        print(f"AUC (real vs synthetic, mean over readers, Obuchowski-Rockette/Hillis) {auc['estimate']:.3f} "
              f"[{auc['ci95'][0]:.3f}, {auc['ci95'][1]:.3f}], p (AUC = 0.5) {auc['p_vs_null']:.4f}")
    else:
        print("AUC CI not defined yet: " + "; ".join(auc["notes"]))
    diff = results["realism_difference"]["all"]
    if diff.get("tost_p") is not None:
        print(f"realism real - synthetic {diff['difference']:.2f}, 90% CI [{diff['ci90'][0]:.2f}, {diff['ci90'][1]:.2f}], "
              f"TOST p {diff['tost_p']:.4f} (margin {diff['margin']})")
    else:
        print("realism difference not defined yet: " + diff["reason"])
    print(f"report: {args.out}/report.html; numbers: {args.out}/results.json")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from PASTALib.review import verify_study

    n = verify_study(args.study, args.key)
    print(f"ok: {n} study files match their checksums")
    return 0
