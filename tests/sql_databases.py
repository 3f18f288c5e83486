"""Databases of the sql plugin's tests, their own, on the machine's PostgreSQL and MariaDB."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
import pymysql

NAME = f"orchestra_sqlplugin_{os.getpid()}"
# PostgreSQL on 127.0.0.1:5432 is orchestra's own database too: the outbound policy refuses it
# unless a test opens it (OPEN_POSTGRESQL).
OPEN_POSTGRESQL = ["127.0.0.1:5432"]
DSNS = {
    "postgresql": f"postgresql://postgres@127.0.0.1:5432/{NAME}",
    "mariadb": f"mysql://root@127.0.0.1:3306/{NAME}",
}
SCHEMA = {
    "postgresql": [
        "CREATE TABLE users (id integer PRIMARY KEY, email varchar(100) NOT NULL)",
        "CREATE TABLE blobs (id integer PRIMARY KEY, content bytea NOT NULL)",
    ],
    "mariadb": [
        "CREATE TABLE users (id integer PRIMARY KEY, email varchar(100) NOT NULL)",
        "CREATE TABLE blobs (id integer PRIMARY KEY, content blob NOT NULL)",
    ],
}
USERS = [(1, "ada@example.test"), (2, "grace@example.test")]


@contextmanager
def server(backend: str, database: str | None = None) -> Iterator:
    """A DB-API connection (autocommit) to the server, or to one of its databases."""
    if backend == "postgresql":
        connection = psycopg2.connect(
            host="127.0.0.1", user="postgres", dbname=database or "postgres"
        )
        connection.autocommit = True
    else:
        connection = pymysql.connect(
            host="127.0.0.1", user="root", database=database, autocommit=True
        )
    try:
        yield connection
    finally:
        connection.close()


def query(backend: str, statement: str) -> list[tuple]:
    with server(backend, NAME) as connection:
        cursor = connection.cursor()
        cursor.execute(statement)
        return list(cursor.fetchall()) if cursor.description else []


def create(backend: str) -> None:
    with server(backend) as connection:
        connection.cursor().execute(f"CREATE DATABASE {NAME}")
    with server(backend, NAME) as connection:
        cursor = connection.cursor()
        for statement in SCHEMA[backend]:
            cursor.execute(statement)
        cursor.executemany("INSERT INTO users VALUES (%s, %s)", USERS)


def drop(backend: str) -> None:
    force = " WITH (FORCE)" if backend == "postgresql" else ""
    with server(backend) as connection:
        connection.cursor().execute(f"DROP DATABASE IF EXISTS {NAME}{force}")
