print("redlock: being written")
