-- Data migrations are plain SQL too. This one comes as a pair of files.
INSERT INTO users (email, name) VALUES ('admin@example.com', 'Administrator');
INSERT INTO posts (author_id, title, body, published)
SELECT id, 'Hello', 'The first post.', 1 FROM users WHERE email = 'admin@example.com';
