print("redlock-bench: being written")
