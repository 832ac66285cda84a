-- upgrade
CREATE TABLE notes (id integer PRIMARY KEY, body text NOT NULL);

-- rollback
DROP TABLE notes;
