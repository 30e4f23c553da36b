-- fluxd schema for PostgreSQL, version 3 (SQLite's version 5): credits. Amounts are BIGINT
-- thousandths of a credit, so debits and refunds add up exactly. A tenant without a balance
-- row is unlimited; an endpoint without a price row is free.
CREATE TABLE credit_balances (
    tenant TEXT PRIMARY KEY REFERENCES tenants (id),
    balance BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE prices (
    -- The endpoint's name, e.g. 'flux-dev'.
    endpoint TEXT PRIMARY KEY,
    per_task BIGINT NOT NULL,
    per_megapixel BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

-- What the submit debited (NULL: nothing, the tenant was unlimited or the task free).
ALTER TABLE tasks ADD COLUMN charged BIGINT;

-- The debit is part of the task's insert and the refund part of its final update, so each
-- commits with the change that causes it. Only a new unfinished task is debited (a copied
-- finished one is not), and only the statuses the reference does not charge are refunded.
-- A submit locks its key's load row, then its tenant's balance row. Triggers on one event fire
-- in name order, and these names sort after the key_load triggers', so a completion also
-- updates the load row first and the balance second: every transaction takes the two in the
-- same order, and none waits on another in a cycle.
CREATE FUNCTION fluxd_credits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        UPDATE credit_balances SET balance = balance - NEW.charged WHERE tenant = NEW.tenant;
    ELSE
        UPDATE credit_balances SET balance = balance + NEW.charged WHERE tenant = NEW.tenant;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER key_load_then_credits_debit AFTER INSERT ON tasks
    FOR EACH ROW WHEN (NEW.charged IS NOT NULL AND NEW.status = 'Pending')
    EXECUTE FUNCTION fluxd_credits();
CREATE TRIGGER key_load_then_credits_refund AFTER UPDATE OF status ON tasks
    FOR EACH ROW WHEN (OLD.status = 'Pending' AND NEW.charged IS NOT NULL
                       AND NEW.status IN ('Error', 'Request Moderated', 'Content Moderated'))
    EXECUTE FUNCTION fluxd_credits();
