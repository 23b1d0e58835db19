"""The claims check on small synthetic results tables: it reports what it sees, both ways."""
import lottery
from lottery.claims import PAPER_LADDER, check_claims

LADDER = {0: 100.0, **{lv: p for lv, p in PAPER_LADDER.items()}}


def _rows(imp_acc, reinit_acc, imp_es, reinit_es, trials=2):
    rows = []
    for level, percent in LADDER.items():
        arms = {"imp": (imp_acc(level), imp_es(level))}
        if level:
            arms["reinit"] = (reinit_acc(level), reinit_es(level))
        for arm, (acc, es) in arms.items():
            for t in range(trials):
                rows.append({"arm": arm, "trial": t, "level": level, "percent_remaining": percent,
                             "early_stop_iteration": es + 100 * t, "early_stop_test_accuracy": acc + 0.0005 * t,
                             "final_test_accuracy": acc})
    return rows


def _config():
    return lottery.get_preset("lenet300-mnist-paper")


def test_a_paper_like_table_reproduces_every_claim():
    rows = _rows(imp_acc=lambda lv: 0.980 + (0.006 if lv else 0), reinit_acc=lambda lv: 0.975,
                 imp_es=lambda lv: 10_000 if lv == 0 else 5_000, reinit_es=lambda lv: 13_000)
    verdicts = [r.verdict for r in check_claims(rows, _config())]
    assert verdicts == ["yes"] * 5, verdicts


def test_a_table_without_the_effect_fails_each_claim():
    rows = _rows(imp_acc=lambda lv: 0.980 - (0.002 if lv else 0), reinit_acc=lambda lv: 0.985,
                 imp_es=lambda lv: 10_000, reinit_es=lambda lv: 10_000)
    results = check_claims(rows, _config())
    assert results[0].verdict == "yes"  # the ladder is structural
    assert [r.verdict for r in results[1:]] == ["no"] * 4
    assert "1.00" in results[1].measured  # ES ratio 1.0 is reported, not hidden


def test_missing_data_is_not_testable():
    rows = [r for r in _rows(lambda lv: 0.98, lambda lv: 0.97, lambda lv: 1, lambda lv: 1) if r["arm"] == "imp"]
    results = check_claims(rows, _config())
    assert results[4].verdict.startswith("not testable")
    other = _config()
    other.data.dataset = "fashion-mnist"
    assert all(r.verdict.startswith("not testable") for r in check_claims(rows, other)[1:])
