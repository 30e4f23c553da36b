-- fluxd schema, version 5: credits. Amounts are BIGINT thousandths of a credit, so debits and
-- refunds add up exactly. A tenant without a balance row is unlimited; an endpoint without a
-- price row is free.
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
-- commits with the change that causes it, whatever statement makes that change. Only a new
-- unfinished task is debited (a copied finished one is not), and only the statuses the
-- reference does not charge are refunded.
CREATE TRIGGER credits_debit AFTER INSERT ON tasks
    WHEN NEW.charged IS NOT NULL AND NEW.status = 'Pending'
BEGIN
    UPDATE credit_balances SET balance = balance - NEW.charged WHERE tenant = NEW.tenant;
END;

CREATE TRIGGER credits_refund AFTER UPDATE OF status ON tasks
    WHEN OLD.status = 'Pending' AND NEW.charged IS NOT NULL
         AND NEW.status IN ('Error', 'Request Moderated', 'Content Moderated')
BEGIN
    UPDATE credit_balances SET balance = balance + NEW.charged WHERE tenant = NEW.tenant;
END;
