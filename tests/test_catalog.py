"""The catalog reader: both styles.csv layouts, every unusable row reported by line, the other formats."""

from pathlib import Path

import pytest

from tailor.data.catalog import CatalogError, read_catalog

HEADER9 = "id,gender,masterCategory,subCategory,articleType,baseColour,season,year,usage\n"
HEADER10 = HEADER9.rstrip("\n") + ",productDisplayName\n"


def write(tmp_path: Path, text: str, name: str = "styles.csv") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_nine_column_layout_reads_the_real_catalog(styles_csv):
    catalog = read_catalog(styles_csv)
    assert len(catalog) == 44445
    assert [(p.line, p.reason) for p in catalog.problems] == [(21287, "no year")]
    assert catalog.frame["label"].nunique() == 143
    assert catalog.frame.loc[catalog.frame["id"] == 15970, "image"].item() == "images/15970.jpg"


def test_ten_column_layout_joins_commas_back_into_the_name(tmp_path):
    path = write(tmp_path, HEADER10
                 + "1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Plain Blue Shirt\n"
                 + "2,Women,Footwear,Shoes,Heels,Black,Summer,2012,Casual,Catwalk Women, Black, Heels\n"
                 + '3,Men,Apparel,Topwear,Tshirts,Red,Fall,2012,Sports,"Quoted, Name"\n')
    catalog = read_catalog(path)
    assert catalog.problems == []
    names = dict(zip(catalog.frame["id"], catalog.frame["productDisplayName"]))
    assert names == {1: "Plain Blue Shirt", 2: "Catwalk Women, Black, Heels", 3: "Quoted, Name"}
    assert list(catalog.frame["label"]) == ["Shirts", "Heels", "Tshirts"]


def test_unusable_rows_are_reported_with_line_numbers(tmp_path):
    path = write(tmp_path, HEADER9
                 + "1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual\n"      # line 2: fine
                 + "2,Men,Apparel,Topwear,Shirts,Blue,Fall,,Casual\n"          # 3: no year
                 + "3,Men,Apparel,Topwear,,Blue,Fall,2011,Casual\n"            # 4: no label
                 + "1,Men,Apparel,Topwear,Shirts,Blue,Fall,2012,Casual\n"      # 5: duplicate id
                 + "4,Men,Apparel,Topwear,Shirts,Blue,Fall,2011\n"             # 6: a field short
                 + "\n"                                                         # 7: blank, not a row
                 + "x5,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual\n"     # 8: bad id
                 + "6,Men,Apparel,Topwear,Shirts,Blue,Fall,20x1,Casual\n"      # 9: bad year
                 + "7,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,extra\n")  # 10: too many (9-col)
    catalog = read_catalog(path)
    assert list(catalog.frame["id"]) == [1]
    reasons = {p.line: p.reason for p in catalog.problems}
    assert sorted(reasons) == [3, 4, 5, 6, 8, 9, 10]
    assert reasons[3] == "no year"
    assert reasons[4] == "no articleType"
    assert reasons[5] == "duplicate id 1 (first on line 2)"
    assert "8 fields" in reasons[6]
    assert "not a positive integer" in reasons[8]
    assert "four-digit year" in reasons[9]
    assert "10 fields" in reasons[10]
    assert "7 left out" in catalog.problem_summary()


def test_image_label_csv_and_label_column_choice(tmp_path):
    path = write(tmp_path, "image,label,colour\na.jpg,dress,red\nb.jpg,,blue\nc.jpg,shirt,\n", "labels.csv")
    catalog = read_catalog(path)
    assert catalog.kind == "image-label"
    assert list(catalog.frame["label"]) == ["dress", "shirt"]
    assert [p.line for p in catalog.problems] == [3]
    by_colour = read_catalog(path, label_column="colour")
    assert list(by_colour.frame["label"]) == ["red", "blue"]


def test_image_folder_tree(tmp_path):
    for label in ("boots", "caps"):
        (tmp_path / label).mkdir()
        (tmp_path / label / "1.jpg").write_bytes(b"x")
        (tmp_path / label / "notes.txt").write_text("not an image")
    catalog = read_catalog(tmp_path)
    assert catalog.kind == "folder"
    assert list(catalog.frame["image"]) == ["boots/1.jpg", "caps/1.jpg"]
    assert list(catalog.frame["label"]) == ["boots", "caps"]


def test_unreadable_catalogs_say_why(tmp_path):
    with pytest.raises(CatalogError, match="no such file"):
        read_catalog(tmp_path / "missing.csv")
    with pytest.raises(CatalogError, match="empty"):
        read_catalog(write(tmp_path, ""))
    with pytest.raises(CatalogError, match="unrecognised header"):
        read_catalog(write(tmp_path, "a,b\n1,2\n"))


def test_non_utf8_bytes_do_not_lose_the_row(tmp_path):
    path = tmp_path / "styles.csv"
    path.write_bytes(HEADER10.encode() + b"1,Men,Apparel,Topwear,Shirts,Blue,Fall,2011,Casual,Caf\xe9 Shirt\n")
    catalog = read_catalog(path)
    assert len(catalog) == 1 and catalog.frame["productDisplayName"].item().startswith("Caf")
