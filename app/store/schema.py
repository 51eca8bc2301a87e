"""The store's schema as numbered migrations.

Each migration runs in one transaction together with the `user_version` bump, so
an interrupted migration leaves the database at the previous version.
"""

from __future__ import annotations

MIGRATIONS: list[str] = [
    # 1: the first schema.
    """
    CREATE TABLE settings (
        key TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    CREATE TABLE account (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        username TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        device_name TEXT NOT NULL,
        relay_token TEXT NOT NULL,
        identity BLOB NOT NULL,
        prekeys BLOB NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE contacts (
        username TEXT PRIMARY KEY,
        display_name TEXT NOT NULL DEFAULT '',
        identity_key BLOB,
        verified INTEGER NOT NULL DEFAULT 0,
        verified_at INTEGER,
        identity_changed INTEGER NOT NULL DEFAULT 0,
        added_at INTEGER NOT NULL
    );
    CREATE TABLE identity_changes (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        old_key BLOB,
        new_key BLOB NOT NULL,
        changed_at INTEGER NOT NULL
    );
    CREATE TABLE sessions (
        username TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        state BLOB NOT NULL,
        updated_at INTEGER NOT NULL,
        PRIMARY KEY (username, device_id)
    );
    CREATE TABLE conversations (
        id INTEGER PRIMARY KEY,
        kind TEXT NOT NULL CHECK (kind IN ('direct', 'group')),
        peer TEXT UNIQUE,
        group_id BLOB UNIQUE,
        title TEXT NOT NULL,
        last_activity INTEGER NOT NULL,
        unread INTEGER NOT NULL DEFAULT 0,
        timer_seconds INTEGER NOT NULL DEFAULT 0,
        muted INTEGER NOT NULL DEFAULT 0,
        archived INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE messages (
        id INTEGER PRIMARY KEY,
        conversation_id INTEGER NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
        uuid TEXT NOT NULL UNIQUE,
        sender TEXT NOT NULL,
        outgoing INTEGER NOT NULL,
        kind TEXT NOT NULL DEFAULT 'text',
        body TEXT NOT NULL,
        sent_at INTEGER NOT NULL,
        received_at INTEGER,
        status TEXT NOT NULL,
        expires_at INTEGER
    );
    CREATE INDEX messages_by_conversation ON messages (conversation_id, sent_at, id);
    CREATE INDEX messages_expiring ON messages (expires_at) WHERE expires_at IS NOT NULL;
    CREATE VIRTUAL TABLE messages_fts USING fts5 (
        body, content = 'messages', content_rowid = 'id',
        tokenize = 'unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages BEGIN
        INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
    END;
    CREATE TRIGGER messages_fts_delete AFTER DELETE ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
    END;
    CREATE TRIGGER messages_fts_update AFTER UPDATE OF body ON messages BEGIN
        INSERT INTO messages_fts (messages_fts, rowid, body) VALUES ('delete', old.id, old.body);
        INSERT INTO messages_fts (rowid, body) VALUES (new.id, new.body);
    END;
    CREATE TABLE groups (
        group_id BLOB PRIMARY KEY,
        conversation_id INTEGER NOT NULL UNIQUE REFERENCES conversations (id) ON DELETE CASCADE,
        title TEXT NOT NULL,
        own_sender_key BLOB,
        epoch INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE group_members (
        group_id BLOB NOT NULL REFERENCES groups (group_id) ON DELETE CASCADE,
        username TEXT NOT NULL,
        sender_key BLOB,
        PRIMARY KEY (group_id, username)
    );
    CREATE TABLE attachments (
        id INTEGER PRIMARY KEY,
        message_id INTEGER NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
        filename TEXT NOT NULL,
        mime TEXT NOT NULL,
        size INTEGER NOT NULL,
        blob_id TEXT,
        key BLOB NOT NULL,
        digest BLOB NOT NULL,
        local_path TEXT,
        state TEXT NOT NULL
    );
    CREATE INDEX attachments_by_message ON attachments (message_id);
    CREATE TABLE outbox (
        id INTEGER PRIMARY KEY,
        client_id TEXT NOT NULL UNIQUE,
        message_id INTEGER REFERENCES messages (id) ON DELETE SET NULL,
        recipient TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        body BLOB NOT NULL,
        created_at INTEGER NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE backup_state (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        method TEXT,
        folder TEXT,
        schedule TEXT NOT NULL DEFAULT 'off',
        keep INTEGER NOT NULL DEFAULT 2,
        last_success INTEGER,
        last_size INTEGER,
        vault_record_id TEXT
    );
    INSERT INTO backup_state (id) VALUES (1);
    """,
    # 2: the backup key, kept in the encrypted store so scheduled backups can run.
    """
    ALTER TABLE backup_state ADD COLUMN backup_key BLOB;
    """,
    # 3: what receiving must remember so a relay cannot replay or jam (issue #18).
    # used_session_starts: the digest of every session start (prekey message) that
    #   used no one-time prekey, kept while the signed prekey and last-resort KEM
    #   prekey it used are ours (docs/protocol.md, "Replay memory").
    # handled_contents: digests of group updates, sender keys and timer changes
    #   already applied, the newest 5000.
    # quarantine: envelopes that could not be opened, as delivered (ciphertext,
    #   never plaintext), the newest 100.
    """
    CREATE TABLE used_session_starts (
        digest BLOB PRIMARY KEY,
        signed_prekey_id INTEGER NOT NULL,
        kem_prekey_id INTEGER NOT NULL,
        used_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE handled_contents (
        id INTEGER PRIMARY KEY,
        digest BLOB NOT NULL UNIQUE,
        handled_at INTEGER NOT NULL
    );
    CREATE TABLE quarantine (
        id INTEGER PRIMARY KEY,
        sender TEXT NOT NULL,
        sender_device INTEGER NOT NULL,
        body BLOB NOT NULL,
        reason TEXT NOT NULL,
        server_time INTEGER NOT NULL,
        received_at INTEGER NOT NULL,
        conversation_id INTEGER REFERENCES conversations (id) ON DELETE SET NULL
    );
    """,
    # 4: a verified contact's changed identity blocks sending until accepted (issue #18).
    # contacts.identity_unaccepted: 1 from the moment a contact that was verified
    #   presents another identity key until the user accepts the new safety number
    #   (docs/protocol.md §8, "Identity changes").
    # held_sends: what was automatic (receipts, sender keys, group updates, timer
    #   changes) and addressed to such a contact, kept unencrypted in this encrypted
    #   store and encrypted only once the new identity is accepted.
    """
    ALTER TABLE contacts ADD COLUMN identity_unaccepted INTEGER NOT NULL DEFAULT 0;
    CREATE TABLE held_sends (
        id INTEGER PRIMARY KEY,
        recipient TEXT NOT NULL,
        body BLOB NOT NULL,
        held_at INTEGER NOT NULL
    );
    CREATE INDEX held_sends_by_recipient ON held_sends (recipient, id);
    """,
    # 5: a restore resumes no session (issue #18; docs/protocol.md, "Restore").
    # archived_sessions: the pairwise sessions a restore retired, decrypt-only (no
    #   sending chain), kept to open late messages of the old sessions; the newest
    #   few per device.
    # restore_notices: contacts whose next session must open with a restore notice.
    """
    CREATE TABLE archived_sessions (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        state BLOB NOT NULL,
        archived_at INTEGER NOT NULL
    );
    CREATE INDEX archived_sessions_by_device ON archived_sessions (username, device_id, id);
    CREATE TABLE restore_notices (
        username TEXT PRIMARY KEY,
        restored_at INTEGER NOT NULL
    );
    """,
    # 6: group membership as signed epochs (issue #18; docs/protocol.md §6, "Group
    # state"). groups.state_change: the signed change that made the state this device
    # holds (app.protocol.group_state.GroupChange), kept to check the next one and to
    # hand to a member who lost it; groups.parent_state: the state before it, to judge
    # a concurrent change. NULL for a group made before, until its next change.
    """
    ALTER TABLE groups ADD COLUMN state_change BLOB;
    ALTER TABLE groups ADD COLUMN parent_state BLOB;
    """,
    # 7: the outbox waits per recipient device (issue #21; app/services/delivery.py).
    # outbox_backoff: a device whose mailbox was full; none of the outbox items for
    #   it is sent before not_before (ms), so they still arrive in order, and
    #   failures (refusals in a row) grows the next wait. Kept here, not in
    #   memory, so a restart neither forgets a wait nor starts the backoff over.
    """
    CREATE TABLE outbox_backoff (
        recipient TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        not_before INTEGER NOT NULL,
        failures INTEGER NOT NULL,
        PRIMARY KEY (recipient, device_id)
    ) WITHOUT ROWID;
    """,
    # 8: message actions (issue #24; docs/protocol.md §5, types 9 and 10).
    # messages.quote_*: the message a reply answers (its id and author) and the
    #   snippet the reply carried, shown even when the original is gone here.
    # messages.reactions: JSON {username: [emoji, sent_at ms]}, "" for a reaction
    #   taken back (its time still orders later ones). On the row, not in a table
    #   of its own, so a page of bubbles is read with the one query that reads it.
    """
    ALTER TABLE messages ADD COLUMN quote_uuid TEXT;
    ALTER TABLE messages ADD COLUMN quote_author TEXT;
    ALTER TABLE messages ADD COLUMN quote_text TEXT;
    ALTER TABLE messages ADD COLUMN reactions TEXT;
    """,
    # 9: contacts, message requests and blocking (issue #24; docs/protocol.md,
    # "Message requests and blocking"). All of it local: the relay is never told.
    # contacts.accepted: 1 for a contact (someone the user wrote to, started a chat
    #   or a group with, or accepted); a direct chat with anyone else is a request.
    #   Everyone known before this migration is grandfathered in as a contact.
    # contacts.blocked: 1 while blocked: what they send is dropped on arrival.
    # conversations.request: 1 for a group a non-contact added the user to, until
    #   the user accepts it (or speaks in it).
    """
    ALTER TABLE contacts ADD COLUMN accepted INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE contacts ADD COLUMN blocked INTEGER NOT NULL DEFAULT 0;
    UPDATE contacts SET accepted = 1;
    INSERT OR IGNORE INTO contacts (username, accepted, added_at)
        SELECT peer, 1, last_activity FROM conversations WHERE peer IS NOT NULL;
    ALTER TABLE conversations ADD COLUMN request INTEGER NOT NULL DEFAULT 0;
    """,
    # 10: attachment captions and thumbnails (issue #24; docs/protocol.md §5, type 11).
    # attachments.caption: the text sent with the file ("" for none).
    # attachments.thumbnail: the small JPEG/PNG preview an image arrives with, and
    #   its size in pixels. In the (encrypted) store, never in a file: the preview
    #   of a picture is as private as the picture.
    """
    ALTER TABLE attachments ADD COLUMN caption TEXT NOT NULL DEFAULT '';
    ALTER TABLE attachments ADD COLUMN thumbnail BLOB;
    ALTER TABLE attachments ADD COLUMN thumbnail_width INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attachments ADD COLUMN thumbnail_height INTEGER NOT NULL DEFAULT 0;
    """,
    # 11: delete for everyone and edits (issue #24; docs/protocol.md §5, types 12 and
    # 13). A message deleted for everyone keeps its row (the bubble says so) as kind
    # 'deleted', with its body, quote, reactions and attachment gone.
    # messages.edited_at: the sent-at of the edit shown (NULL: never edited); only a
    #   newer edit replaces it, so a late one never undoes a newer one.
    # early_changes: a delete or edit that arrived before the message it names
    #   (envelopes can overtake each other), kept to apply when the message comes:
    #   the chat it came through (sender, and group id or NULL for a direct chat),
    #   and for an edit its text. The newest 1000, none older than the relay keeps
    #   envelopes (30 days).
    """
    ALTER TABLE messages ADD COLUMN edited_at INTEGER;
    CREATE TABLE early_changes (
        id INTEGER PRIMARY KEY,
        message_uuid TEXT NOT NULL,
        sender TEXT NOT NULL,
        group_id BLOB,
        kind TEXT NOT NULL CHECK (kind IN ('delete', 'edit')),
        sent_at INTEGER NOT NULL,
        body TEXT NOT NULL DEFAULT '',
        received_at INTEGER NOT NULL
    );
    CREATE INDEX early_changes_by_message ON early_changes (message_uuid);
    """,
    # 12: messages some of whose copies the relay accepted while others are still in
    # the outbox. When the last copy is refused for good (a removed device, a deleted
    # account), such a message counts as sent, not failed: the other recipients have
    # it. Rows leave when the message's last copy leaves the outbox.
    """
    CREATE TABLE partly_sent (message_id INTEGER PRIMARY KEY);
    """,
    # 13: linked devices (issue #19; docs/protocol.md §13). An account has one
    # account identity; each device a device identity of its own.
    # account.account_identity: the account identity's private keys, on a device
    #   linked to the account (NULL: this device's identity is the account
    #   identity, as for every account made before linking existed).
    # device_lists: the newest signed device list seen for each contact, and our
    #   own (username = ours), under the account identity it was opened with; a
    #   contact's messages go to exactly the devices it names.
    # member_sender_keys: a group member's sender key chain per device (each device
    #   of an account sends on a chain of its own); group_members.sender_key stays
    #   for chains received before, whose device was not recorded.
    """
    ALTER TABLE account ADD COLUMN account_identity BLOB;
    CREATE TABLE device_lists (
        username TEXT PRIMARY KEY,
        account_key BLOB NOT NULL,
        version INTEGER NOT NULL,
        signed BLOB NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE member_sender_keys (
        group_id BLOB NOT NULL,
        username TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        state BLOB NOT NULL,
        PRIMARY KEY (group_id, username, device_id)
    );
    """,
    # 14: sealed channels (issue #22; docs/protocol.md §11), the fast path of sealed
    # sender. Channel keys live here and nowhere else; none of it is backed up (a
    # restored profile opens new channels).
    # sealed_send_channels: this device's channel to one contact device: the chain
    #   state (app/protocol/sealed.py SendChannel), the seed while no envelope that
    #   opens the channel is known to have reached the relay (NULL once one has),
    #   the certificate it is bound to (digest) and the session it was opened on.
    # sealed_send_pending: copies sealed but still in the outbox, by client id: a
    #   retry sends the same channel envelope again rather than spending another
    #   index, and an opener's departure from the outbox confirms its channel.
    # sealed_receive_channels: channels contact devices opened to this device, with
    #   the certificate's expiry; state NULL once retired (its seed id is kept until
    #   then, so a replayed opener cannot start it over).
    # sealed_channel_tags: every tag a live channel expects or recently spent.
    """
    CREATE TABLE sealed_send_channels (
        username TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        channel_id BLOB NOT NULL,
        state BLOB NOT NULL,
        seed BLOB,
        certificate_digest BLOB NOT NULL,
        session_marker BLOB NOT NULL,
        PRIMARY KEY (username, device_id)
    );
    CREATE TABLE sealed_send_pending (
        client_id TEXT PRIMARY KEY,
        username TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        channel_id BLOB NOT NULL,
        opener INTEGER NOT NULL,
        digest BLOB NOT NULL,
        envelope BLOB,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE sealed_receive_channels (
        id INTEGER PRIMARY KEY,
        username TEXT NOT NULL,
        device_id INTEGER NOT NULL,
        seed_id BLOB NOT NULL UNIQUE,
        expires INTEGER NOT NULL,
        state BLOB,
        created_at INTEGER NOT NULL
    );
    CREATE INDEX sealed_receive_channels_by_device
        ON sealed_receive_channels (username, device_id);
    CREATE TABLE sealed_channel_tags (
        tag BLOB PRIMARY KEY,
        channel_id INTEGER NOT NULL
    );
    CREATE INDEX sealed_channel_tags_by_channel ON sealed_channel_tags (channel_id);
    """,
    # 15: history transfer to a linked device (issue #19; docs/protocol.md §14,
    # "History transfer"). history_chunks: on the new device, every chunk another of
    #   our devices announced (content type 20): where its blob waits on the relay
    #   and the key and digest to open it, until it is imported ('imported': the key
    #   and digest are cleared) or cannot be ('failed': expired or damaged). Kept
    #   here so a restart or a dropped connection resumes the download; announced
    #   twice (a replay), a chunk is still one row.
    """
    CREATE TABLE history_chunks (
        transfer_id BLOB NOT NULL,
        chunk_index INTEGER NOT NULL,
        last INTEGER NOT NULL,
        messages INTEGER NOT NULL,
        total INTEGER NOT NULL,
        blob_id TEXT NOT NULL,
        key BLOB,
        digest BLOB,
        size INTEGER NOT NULL,
        sender_device INTEGER NOT NULL,
        state TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'imported', 'failed')),
        announced_at INTEGER NOT NULL,
        PRIMARY KEY (transfer_id, chunk_index)
    ) WITHOUT ROWID;
    """,
]
