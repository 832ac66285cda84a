-- upgrade
CREATE TABLE posts (
    id        INTEGER PRIMARY KEY,
    author_id INTEGER NOT NULL REFERENCES users (id),
    title     TEXT NOT NULL,
    body      TEXT NOT NULL DEFAULT '',
    published INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX posts_author ON posts (author_id);

-- rollback
DROP TABLE posts;
