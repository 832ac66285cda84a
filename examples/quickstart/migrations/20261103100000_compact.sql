-- VACUUM cannot run inside a transaction: the directive runs this section
-- outside one, statement by statement.
-- upgrade
-- lockstep:no-transaction
CREATE INDEX posts_published ON posts (published);
VACUUM;

-- rollback
DROP INDEX posts_published;
