-- upgrade
INSERT INTO notes (id, body) VALUES (1, 'welcome');

-- rollback
DELETE FROM notes WHERE id = 1;
