-- 0006_memory: episodic and semantic memory, per tenant.
--
-- memory_collections: a tenant's knowledge collections. The first vector stored fixes the
-- collection's embedder and dimension; vectors of another dimension are refused.
CREATE TABLE memory_collections (
    tenant_id       TEXT NOT NULL,
    name            TEXT NOT NULL,
    embedder        TEXT,
    dimension       INTEGER,
    retention_days  DOUBLE PRECISION,
    created         DOUBLE PRECISION NOT NULL,
    updated         DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (tenant_id, name)
);

-- memory_documents: one row per source added to a collection; adding the same source again
-- replaces its chunks.
CREATE TABLE memory_documents (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    collection  TEXT NOT NULL,
    source      TEXT NOT NULL,
    digest      TEXT NOT NULL,
    importance  DOUBLE PRECISION NOT NULL DEFAULT 0.5,
    created     DOUBLE PRECISION NOT NULL,
    UNIQUE (tenant_id, collection, source)
);

-- memory_chunks: the searchable pieces, with their vector (float32 bytes) and the embedder and
-- dimension that made it (NULL when stored without an embedder: searched lexically).
CREATE TABLE memory_chunks (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    collection  TEXT NOT NULL,
    document_id BIGINT NOT NULL REFERENCES memory_documents (id) ON DELETE CASCADE,
    seq         INTEGER NOT NULL,
    text        TEXT NOT NULL,
    tokens      INTEGER NOT NULL,
    embedder    TEXT,
    dimension   INTEGER,
    vector      BYTEA,
    created     DOUBLE PRECISION NOT NULL
);
CREATE INDEX memory_chunks_scope ON memory_chunks (tenant_id, collection, id);
CREATE INDEX memory_chunks_document ON memory_chunks (document_id);

-- memory_episodes: what each finished job left behind, one per job.
CREATE TABLE memory_episodes (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    job_id      TEXT NOT NULL,
    workflow    TEXT NOT NULL,
    outcome     TEXT NOT NULL,
    summary     TEXT NOT NULL,
    details     TEXT NOT NULL DEFAULT '{}',
    cost_usd    DOUBLE PRECISION NOT NULL DEFAULT 0,
    importance  DOUBLE PRECISION NOT NULL,
    finished    DOUBLE PRECISION NOT NULL,
    embedder    TEXT,
    dimension   INTEGER,
    vector      BYTEA,
    created     DOUBLE PRECISION NOT NULL,
    UNIQUE (tenant_id, job_id)
);
CREATE INDEX memory_episodes_scope ON memory_episodes (tenant_id, workflow, id);
