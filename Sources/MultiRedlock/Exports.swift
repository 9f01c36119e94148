// `import MultiRedlock` is enough to name servers (`RedisServer`) and connection options.
@_exported import Hiredis
