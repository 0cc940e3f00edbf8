// Subscribes with supabase-js as an application would and prints one JSON line per event, for the tests:
// {"status": ...} for each subscribe state, {"change": payload} for each postgres_changes message,
// {"closed": true} when the channel closes. Argument: JSON {"bindings": [...], "accessToken": "..."?};
// a binding's `filter` may instead be `builder`: [[method, column, value], ...] for postgresChangesFilter().
import { createClient } from '@supabase/supabase-js'
import { postgresChangesFilter } from '@supabase/realtime-js'

const options = JSON.parse(process.argv[2])
const supabase = createClient(process.env.GRIDLOOP_URL, process.env.GRIDLOOP_ANON_KEY)
const print = (line) => console.log(JSON.stringify(line))
if (options.accessToken) {
  await supabase.realtime.setAuth(options.accessToken)
}
let channel = supabase.channel(options.topic ?? 'gridloop-test')
for (const binding of options.bindings) {
  const { builder, ...rest } = binding
  if (builder) {
    let filter = postgresChangesFilter()
    for (const [method, ...args] of builder) {
      filter = filter[method](...args)
    }
    rest.filter = filter
  }
  channel = channel.on('postgres_changes', rest, (payload) => print({ change: payload }))
}
channel.on('system', {}, (payload) => print({ system: payload }))
channel.subscribe((status, error) => print({ status, error: error ? String(error.message) : null, vsn: supabase.realtime.vsn }))
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
