// In-memory test accounts. Subjects (sub) are the usernames.
import { createHash, timingSafeEqual } from 'node:crypto';

const FIXED = new Map([
  ['alice', {
    password: 'alice-password', name: 'Alice Admin', email: 'alice@example.com', groups: ['admins'],
  }],
  ['bob', {
    password: 'bob-password', name: 'Bob Buyer', email: 'bob@example.com', groups: ['customers'],
  }],
  ['carol', {
    password: 'carol-password', name: 'Carol Customer', email: 'carol@example.com', groups: [],
  }],
  // Claims alice's address without having proved it (email_verified: false).
  ['mallory', {
    password: 'mallory-password', name: 'Mallory', email: 'alice@example.com', groups: [],
    emailVerified: false,
  }],
]);

// user<N> for load tests: N is 1-9 decimal digits without a leading zero
// (so "user7" and "user007" are not two spellings of one account).
const LOAD_USER = /^user(0|[1-9][0-9]{0,8})$/;

export function lookupUser(username) {
  if (typeof username !== 'string') return undefined;
  const fixed = FIXED.get(username);
  if (fixed) return { username, ...fixed };
  if (LOAD_USER.test(username)) {
    return {
      username,
      password: `${username}-password`,
      name: `Load User ${username.slice(4)}`,
      email: `${username}@example.com`,
      groups: [],
    };
  }
  return undefined;
}

function sameSecret(a, b) {
  const ha = createHash('sha256').update(String(a)).digest();
  const hb = createHash('sha256').update(String(b)).digest();
  return timingSafeEqual(ha, hb);
}

// Returns the account id (sub) on success, undefined otherwise.
export function authenticate(username, password) {
  const user = lookupUser(username);
  // Compare even for unknown users so both failures take the same path.
  const ok = sameSecret(password ?? '', user ? user.password : '\0no-such-user');
  return user && ok ? user.username : undefined;
}

export function allClaims(sub) {
  const user = lookupUser(sub);
  if (!user) return undefined;
  return {
    sub: user.username,
    name: user.name,
    preferred_username: user.username,
    email: user.email,
    email_verified: user.emailVerified ?? true,
    groups: [...user.groups],
  };
}

// oidc-provider `findAccount` implementation.
export async function findAccount(_ctx, sub) {
  const claims = allClaims(sub);
  if (!claims) return undefined;
  return {
    accountId: sub,
    // oidc-provider filters these by the granted scopes / requested claims.
    async claims() {
      return { ...claims, groups: [...claims.groups] };
    },
  };
}

export const FIXED_USERS = [...FIXED.keys()];
