-- organization_usage in stripes: (organization_id, stripe) rows whose sums are what the
-- organization holds. With a quota, every write of the organization's calls updates
-- stripe 0 (its row lock serializes them against the quota, exactly); without one, a
-- stripe drawn at random, so that concurrent creates of one organization do not wait for
-- one another's commit on a single row.
ALTER TABLE organization_usage ADD COLUMN stripe smallint NOT NULL DEFAULT 0;
ALTER TABLE organization_usage DROP CONSTRAINT organization_usage_pkey;
ALTER TABLE organization_usage ADD PRIMARY KEY (organization_id, stripe);
