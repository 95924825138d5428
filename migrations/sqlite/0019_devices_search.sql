-- The device list's search (text in a device's id, name or host name) read
-- from a trigram index instead of matching LIKE against every device. The
-- index keeps its own copy of the three columns (rowids of `devices` may be
-- renumbered by VACUUM, so it is not an external-content table); triggers
-- keep it in step in the same transaction, finding a device's entry through
-- the index itself. PostgreSQL keeps searching with LIKE and its statistics.
CREATE VIRTUAL TABLE devices_search USING fts5(id, name, hostname, tokenize = 'trigram');
INSERT INTO devices_search (id, name, hostname) SELECT id, name, hostname FROM devices;

CREATE TRIGGER devices_search_insert AFTER INSERT ON devices
BEGIN
    INSERT INTO devices_search (id, name, hostname) VALUES (NEW.id, NEW.name, NEW.hostname);
END;

CREATE TRIGGER devices_search_update AFTER UPDATE OF id, name, hostname ON devices
WHEN OLD.id IS NOT NEW.id OR OLD.name IS NOT NEW.name OR OLD.hostname IS NOT NEW.hostname
BEGIN
    DELETE FROM devices_search
     WHERE rowid IN (SELECT rowid FROM devices_search WHERE devices_search MATCH 'id : "' || OLD.id || '"')
       AND id = OLD.id;
    INSERT INTO devices_search (id, name, hostname) VALUES (NEW.id, NEW.name, NEW.hostname);
END;

CREATE TRIGGER devices_search_delete AFTER DELETE ON devices
BEGIN
    DELETE FROM devices_search
     WHERE rowid IN (SELECT rowid FROM devices_search WHERE devices_search MATCH 'id : "' || OLD.id || '"')
       AND id = OLD.id;
END;

-- How many devices hold each trigram: the list searches through the index
-- only when the rarest trigram of the text is rare enough to beat reading
-- every device (a search for "camera" in a fleet of cameras is not).
CREATE VIRTUAL TABLE devices_search_terms USING fts5vocab(devices_search, 'row');
