// The realtime example of the project's API documentation (Flux's API page, "Real-time Subscriptions"; docs/design.md §5), verbatim
// between the markers; only `url` and `anonKey` come from the environment, and the lines after the example
// report to the test when the channel has joined. supabase-js picks its own serializer (no `vsn` pinned).
const url = process.env.GRIDLOOP_URL
const anonKey = process.env.GRIDLOOP_ANON_KEY

// ---- the documented example ----
import { createClient } from '@supabase/supabase-js'

const supabase = createClient(url, anonKey)

// Subscribe to BESS updates
const channel = supabase
  .channel('bess-realtime')
  .on(
    'postgres_changes',
    {
      event: 'INSERT',
      schema: 'flux',
      table: 'mg_bess_readings',
      filter: 'device_id=eq.123e4567-e89b-12d3-a456-426614174000'
    },
    (payload) => {
      console.log('New reading:', payload.new)
    }
  )
  .subscribe()
// ---- end of the documented example ----

const joined = setInterval(() => {
  if (channel.state === 'joined') {
    clearInterval(joined)
    console.log(`JOINED vsn=${supabase.realtime.vsn}`)
  }
}, 20)
process.stdin.on('end', () => process.exit(0))
process.stdin.resume()
