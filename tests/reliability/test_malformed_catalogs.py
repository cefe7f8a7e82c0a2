"""Property-based: the catalog reader never crashes and never loses a row silently.

Hypothesis writes catalogs line by line, from good rows and every kind of bad one, in both styles.csv
layouts. Each line is predicted to be read (with exactly these values), reported (with its line number)
or blank (neither); the reader must agree on every line.
"""

import csv
import os
import io

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tailor.data.catalog import read_catalog

COLUMNS9 = ["id", "gender", "masterCategory", "subCategory", "articleType", "baseColour", "season", "year", "usage"]
KINDS = ["good", "good", "good", "no_year", "bad_year", "no_label", "dup", "short", "huge_id", "blank",
         "bad_bytes", "extra"]
words = st.text(alphabet=st.characters(whitelist_categories=("L", "N"), whitelist_characters=" -&'"),
                min_size=1, max_size=12).map(str.strip).filter(bool)
names = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=30)
row_spec = st.tuples(st.sampled_from(KINDS), words, names, st.integers(1000, 9999), st.booleans())


def quoted(fields: list[str]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow(fields)
    return buffer.getvalue()


def render(specs, ten_columns: bool) -> tuple[bytes, dict[int, tuple]]:
    """The file's bytes, and line → expectation: ("read", id, label) / ("problem",) / ("blank",)."""
    lines = [(",".join(COLUMNS9 + (["productDisplayName"] if ten_columns else []))).encode()]
    expected: dict[int, tuple] = {}
    good_ids: list[int] = []
    next_id = 1
    for kind, label, name, year, raw_name in specs:
        line_no = len(lines) + 1
        pid, label_out, year_out = str(next_id), label, str(year)
        next_id += 1
        if kind == "extra" and ten_columns:
            kind = "good"  # in the 10-column layout extra fields belong to the name
        outcome: tuple = ("read", int(pid), label)
        if kind == "blank":
            lines.append(b"")
            expected[line_no] = ("blank",)
            continue
        if kind == "no_year":
            year_out, outcome = "", ("problem",)
        elif kind == "bad_year":
            year_out, outcome = "20x4", ("problem",)
        elif kind == "no_label":
            label_out, outcome = "", ("problem",)
        elif kind == "huge_id":
            pid, outcome = str(2**70), ("problem",)
        elif kind == "dup" and good_ids:
            pid, outcome = str(good_ids[0]), ("problem",)
        fields = [pid, "Men", "Apparel", "Topwear", label_out, "Blue", "Fall", year_out, "Casual"]
        if ten_columns:
            # Kaggle wrote names raw, commas and all; a name with quotes is written quoted here.
            fields.append(name)
        text = ",".join(fields) if (ten_columns and raw_name and '"' not in name and "\r" not in name
                                    and "\n" not in name) else quoted(fields)
        if "\n" in text or "\r" in text:
            text = quoted([f.replace("\n", " ").replace("\r", " ") for f in fields])
        encoded = text.encode()
        if kind == "short":
            encoded = ",".join(fields[:5]).encode()
            outcome = ("problem",)
        elif kind == "extra":
            encoded += b",surplus"
            outcome = ("problem",)
        elif kind == "bad_bytes":
            encoded += b"\xff\xfe" if ten_columns else b""
            if not ten_columns:  # bytes that are not UTF-8 inside the label: kept, replaced
                raw = [f.encode() for f in fields]
                raw[4] += b"\xff"
                encoded = b",".join(raw)
                outcome = ("read", int(pid), label + "\ufffd")
        if outcome[0] == "read":
            good_ids.append(int(pid))
        lines.append(encoded)
        expected[line_no] = outcome
    return b"\n".join(lines) + b"\n", expected


@settings(max_examples=int(os.environ.get("TAILOR_FUZZ_EXAMPLES", 200)), derandomize=not os.environ.get("TAILOR_FUZZ_EXAMPLES"), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(specs=st.lists(row_spec, min_size=1, max_size=40), ten_columns=st.booleans())
def test_every_row_is_read_or_reported(tmp_path, specs, ten_columns):
    data, expected = render(specs, ten_columns)
    path = tmp_path / "styles.csv"
    path.write_bytes(data)
    catalog = read_catalog(path)

    read = {int(line): (int(pid), label) for line, pid, label in
            zip(catalog.frame["line"], catalog.frame["id"], catalog.frame["label"])}
    reported = [p.line for p in catalog.problems]
    assert len(reported) == len(set(reported)), "a line reported twice"
    assert set(read).isdisjoint(reported), "a line both read and reported"
    for line, outcome in expected.items():
        if outcome[0] == "read":
            assert read.get(line) == outcome[1:], (line, outcome, read.get(line))
        elif outcome[0] == "problem":
            assert line in reported, (line, "not reported")
        else:
            assert line not in read and line not in reported
    assert len(read) + len(reported) == sum(1 for o in expected.values() if o[0] != "blank")


def test_names_with_commas_survive_the_ten_column_layout(tmp_path):
    header = ",".join(COLUMNS9) + ",productDisplayName\n"
    path = tmp_path / "styles.csv"
    path.write_text(header + '1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Men, "Slim", Fit, Shirt\n'
                    + '2,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,"Quoted, with ""inner"" quotes"\n')
    names = list(read_catalog(path).frame["productDisplayName"])
    assert names == ['Men, "Slim", Fit, Shirt', 'Quoted, with "inner" quotes']
