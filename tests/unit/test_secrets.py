"""Secrets stay out of command lines and out of other users' reach.

The catalog password and the S3 keys reach Spark through a properties file only the owner can read
(``spark-submit --properties-file``), never as ``--conf`` arguments that ``ps`` shows; ``lakehouse run
--print-command`` therefore prints none of them; the home that holds the catalog, the Airflow
database and that file is created 0700.
"""

from __future__ import annotations

import re
import stat
from pathlib import Path

import pytest

from lakehouse import cli
from lakehouse.registry import registry_from_settings
from lakehouse.settings import Settings, load_settings
from lakehouse.spark import SECRETS_FILE, _escape_property, secret_conf, secrets_file, spark_conf, submit_spec

PASSWORD = "catalog=pa:ss#word\\ with spaces"
ACCESS_KEY = "lakehouse-app"
SECRET_KEY = "s3-secret-key-value"
# Spark's own spark.redaction.regex default: what its UI and event log hide.
SPARK_REDACTION = re.compile(r"(?i)secret|password|token|access[.]key")


def production(home: Path, **extra: str) -> Settings:
    return load_settings({"LAKEHOUSE_HOME": str(home),
                          "LAKEHOUSE_CATALOG_URI": "jdbc:postgresql://postgres:5432/iceberg_catalog",
                          "LAKEHOUSE_CATALOG_USER": "lakehouse", "LAKEHOUSE_CATALOG_PASSWORD": PASSWORD,
                          "LAKEHOUSE_WAREHOUSE": "s3://warehouse/", "LAKEHOUSE_S3_ENDPOINT": "http://minio:9000",
                          "LAKEHOUSE_S3_ACCESS_KEY": ACCESS_KEY, "LAKEHOUSE_S3_SECRET_KEY": SECRET_KEY, **extra})


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_credentials_are_not_spark_conf_arguments(tmp_path: Path) -> None:
    settings = production(tmp_path / "home")
    conf = spark_conf(settings)
    assert not [k for k in conf if SPARK_REDACTION.search(k) or k.endswith("access-key-id")]
    assert not {PASSWORD, ACCESS_KEY, SECRET_KEY} & set(conf.values())
    assert secret_conf(settings) == {"spark.sql.catalog.lakehouse.jdbc.password": PASSWORD,
                                     "spark.sql.catalog.lakehouse.s3.access-key-id": ACCESS_KEY,
                                     "spark.sql.catalog.lakehouse.s3.secret-access-key": SECRET_KEY}
    assert conf["spark.sql.catalog.lakehouse.jdbc.user"] == "lakehouse"


def test_submit_reads_credentials_from_an_owner_only_file(tmp_path: Path) -> None:
    settings = production(tmp_path / "home")
    spec = submit_spec(settings, "silver")
    argv = spec.argv("spark-submit")
    text = " ".join(argv)
    assert not [s for s in (PASSWORD, ACCESS_KEY, SECRET_KEY) if s in text]
    path = Path(argv[argv.index("--properties-file") + 1])
    assert path == settings.run_dir / SECRETS_FILE == Path(spec.properties_file or "")
    assert _mode(path) == 0o600 and _mode(settings.home) == 0o700
    lines = path.read_text().splitlines()
    assert "spark.sql.catalog.lakehouse.jdbc.password=catalog\\=pa\\:ss\\#word\\\\ with spaces" in lines
    assert f"spark.sql.catalog.lakehouse.s3.secret-access-key={SECRET_KEY}" in lines


def test_secrets_file_is_replaced_whole_and_only_when_it_changes(tmp_path: Path) -> None:
    settings = production(tmp_path / "home")
    first = secrets_file(settings)
    assert first is not None
    inode = first.stat().st_ino
    assert secrets_file(settings) == first and first.stat().st_ino == inode  # unchanged: not rewritten
    rotated = production(tmp_path / "home", LAKEHOUSE_S3_SECRET_KEY="rotated-secret")
    assert secrets_file(rotated) == first
    assert "rotated-secret" in first.read_text() and first.stat().st_ino != inode
    assert _mode(first) == 0o600
    assert [p.name for p in first.parent.iterdir()] == [SECRETS_FILE]  # no temporary file left behind


def test_embedded_default_has_no_secrets_file(tmp_path: Path) -> None:
    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path / "home")})
    assert secret_conf(settings) == {} and secrets_file(settings) is None
    assert submit_spec(settings, "bronze").properties_file is None
    assert "--properties-file" not in submit_spec(settings, "bronze").argv()


@pytest.mark.parametrize(("raw", "escaped"), [
    ("plain", "plain"),
    ("a=b:c", "a\\=b\\:c"),
    (" lead", "\\ lead"),
    ("back\\slash", "back\\\\slash"),
    ("line\nbreak#!", "line\\nbreak\\#\\!"),
])
def test_property_escaping(raw: str, escaped: str) -> None:
    assert _escape_property(raw) == escaped


def test_print_command_shows_no_secret(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in production(tmp_path / "home").env().items():
        monkeypatch.setenv(key, value)
    assert cli.main(["run", "silver", "--print-command"]) == 0
    out = capsys.readouterr().out
    assert "--properties-file" in out and "spark.sql.catalog.lakehouse.jdbc.user=lakehouse" in out
    assert not [s for s in (PASSWORD, ACCESS_KEY, SECRET_KEY) if s in out]


def test_home_is_created_owner_only(tmp_path: Path) -> None:
    settings = load_settings({"LAKEHOUSE_HOME": str(tmp_path / "a" / "home")})
    registry_from_settings(settings)  # the embedded registry is one of the first things to create it
    assert _mode(settings.home) == 0o700
    assert (settings.home / "schema-registry").is_dir()


def test_an_open_home_of_ours_is_narrowed(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir(mode=0o755)
    home.chmod(0o755)
    load_settings({"LAKEHOUSE_HOME": str(home)}).private_home()
    assert _mode(home) == 0o700
