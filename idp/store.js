// In-memory storage adapter for oidc-provider.
//
// oidc-provider ships a development adapter too, but it is an LRU capped at
// 1000 entries (sessions, codes, tokens, grants, interactions all share it),
// so a load test with a few hundred logins would silently evict live refresh
// tokens. This one is a plain Map per model with per-entry expiry and a
// periodic sweep, and it can be iterated, which the /_test endpoints use
// (find the grants / sessions of one account).
//
// Nothing here survives a restart: the IdP is for development and tests.

const GRANTABLE = new Set([
  'AccessToken',
  'AuthorizationCode',
  'RefreshToken',
  'DeviceCode',
  'BackchannelAuthenticationRequest',
  'PreAuthorizedCode',
]);

const nowSeconds = () => Math.floor(Date.now() / 1000);

export class MemoryStore {
  constructor({ sweepIntervalMs = 60_000 } = {}) {
    // model name -> Map(id -> { payload, expiresAt (ms epoch) | undefined })
    this.models = new Map();
    // session uid -> session id
    this.sessionUids = new Map();
    // user code -> id (device flow; unused here but part of the adapter API)
    this.userCodes = new Map();
    // grantId -> Set of `${model}\0${id}`
    this.grantMembers = new Map();

    this.sweepTimer = setInterval(() => this.sweep(), sweepIntervalMs);
    this.sweepTimer.unref();
  }

  close() {
    clearInterval(this.sweepTimer);
  }

  table(model) {
    let t = this.models.get(model);
    if (!t) {
      t = new Map();
      this.models.set(model, t);
    }
    return t;
  }

  get(model, id) {
    const t = this.models.get(model);
    const entry = t?.get(id);
    if (!entry) return undefined;
    if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
      this.remove(model, id);
      return undefined;
    }
    return entry.payload;
  }

  set(model, id, payload, expiresIn) {
    const t = this.table(model);
    const previous = t.get(id);
    if (previous) this.unindex(model, id, previous.payload);

    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    t.set(id, { payload, expiresAt });

    if (model === 'Session' && payload.uid) this.sessionUids.set(payload.uid, id);
    if (payload.userCode) this.userCodes.set(payload.userCode, id);
    if (GRANTABLE.has(model) && payload.grantId) {
      let members = this.grantMembers.get(payload.grantId);
      if (!members) {
        members = new Set();
        this.grantMembers.set(payload.grantId, members);
      }
      members.add(`${model}\0${id}`);
    }
  }

  remove(model, id) {
    const t = this.models.get(model);
    const entry = t?.get(id);
    if (!entry) return;
    t.delete(id);
    this.unindex(model, id, entry.payload);
  }

  unindex(model, id, payload) {
    if (model === 'Session' && payload.uid && this.sessionUids.get(payload.uid) === id) {
      this.sessionUids.delete(payload.uid);
    }
    if (payload.userCode && this.userCodes.get(payload.userCode) === id) {
      this.userCodes.delete(payload.userCode);
    }
    if (GRANTABLE.has(model) && payload.grantId) {
      const members = this.grantMembers.get(payload.grantId);
      if (members) {
        members.delete(`${model}\0${id}`);
        if (members.size === 0) this.grantMembers.delete(payload.grantId);
      }
    }
  }

  // Removes every token (of any grantable model) that belongs to grantId.
  revokeGrantMembers(grantId) {
    const members = this.grantMembers.get(grantId);
    if (!members) return 0;
    let n = 0;
    for (const key of [...members]) {
      const sep = key.indexOf('\0');
      this.remove(key.slice(0, sep), key.slice(sep + 1));
      n += 1;
    }
    this.grantMembers.delete(grantId);
    return n;
  }

  // Live (not expired) entries of a model: [[id, payload], ...]
  entries(model) {
    const t = this.models.get(model);
    if (!t) return [];
    const out = [];
    for (const id of [...t.keys()]) {
      const payload = this.get(model, id);
      if (payload) out.push([id, payload]);
    }
    return out;
  }

  sweep() {
    const now = Date.now();
    for (const [model, t] of this.models) {
      for (const [id, entry] of [...t]) {
        if (entry.expiresAt !== undefined && entry.expiresAt <= now) this.remove(model, id);
      }
    }
  }

  counts() {
    const out = {};
    for (const [model, t] of this.models) out[model] = t.size;
    return out;
  }

  // Returns an oidc-provider adapter class bound to this store.
  adapterClass() {
    const store = this;
    return class MemoryAdapter {
      constructor(model) {
        this.model = model;
      }

      async upsert(id, payload, expiresIn) {
        store.set(this.model, id, payload, expiresIn);
      }

      async find(id) {
        return store.get(this.model, id);
      }

      async findByUid(uid) {
        const id = store.sessionUids.get(uid);
        return id === undefined ? undefined : store.get(this.model, id);
      }

      async findByUserCode(userCode) {
        const id = store.userCodes.get(userCode);
        return id === undefined ? undefined : store.get(this.model, id);
      }

      async consume(id) {
        const payload = store.get(this.model, id);
        if (payload) payload.consumed = nowSeconds();
      }

      async destroy(id) {
        store.remove(this.model, id);
      }

      async revokeByGrantId(grantId) {
        // Only this model's members of the grant.
        const members = store.grantMembers.get(grantId);
        if (!members) return;
        for (const key of [...members]) {
          const sep = key.indexOf('\0');
          if (key.slice(0, sep) === this.model) store.remove(this.model, key.slice(sep + 1));
        }
      }
    };
  }
}
