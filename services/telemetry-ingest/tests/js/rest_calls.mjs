// Makes REST calls with supabase-js as an application would, one per stdin line, and prints one JSON line
// per call with what supabase-js returned: {"data", "error", "count", "status", "statusText"}, or {"thrown":
// {name, message, code, details, hint}} when the call rejects (after .throwOnError()). A call is JSON
// {"key": "<API key>", "from": "<table>" | "rpc": [name, args, options], "chain": [[method, ...args], ...]}:
// the builder methods are applied in order to supabase.from(table) or supabase.rpc(...), e.g.
// [["select", "name"], ["in", "name", ["a", "b"]]]. Calls run one after another; stdin's end ends the script.
import { createInterface } from 'node:readline'
import { createClient } from '@supabase/supabase-js'

const clients = new Map()
const client = (key) => {
  if (!clients.has(key)) {
    clients.set(
      key,
      createClient(process.env.GRIDLOOP_URL, key, {
        db: { schema: 'flux' },
        auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false }
      })
    )
  }
  return clients.get(key)
}

const call = async (request) => {
  const supabase = client(request.key ?? process.env.GRIDLOOP_ANON_KEY)
  let builder = request.rpc ? supabase.rpc(...request.rpc) : supabase.from(request.from)
  for (const [method, ...args] of request.chain ?? []) {
    builder = builder[method](...args)
  }
  try {
    const { data, error, count, status, statusText } = await builder
    return { data, error, count, status, statusText }
  } catch (thrown) {
    const { name, message, code, details, hint } = thrown
    return { thrown: { name, message, code, details, hint } }
  }
}

for await (const line of createInterface({ input: process.stdin })) {
  console.log(JSON.stringify(await call(JSON.parse(line))))
}
