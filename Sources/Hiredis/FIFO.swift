/// A first-in, first-out queue with O(1) amortized append and removal at the front.
struct FIFO<Element> {
    private var storage: [Element?] = []
    private var head = 0

    var isEmpty: Bool { head == storage.count }
    var count: Int { storage.count - head }

    mutating func append(_ element: Element) {
        storage.append(element)
    }

    mutating func popFirst() -> Element? {
        guard head < storage.count else { return nil }
        let element = storage[head]
        storage[head] = nil
        head += 1
        if head == storage.count {
            storage.removeAll(keepingCapacity: true)
            head = 0
        } else if head >= 1024 && head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
        return element
    }

    /// Removes and returns every element, oldest first.
    mutating func removeAll() -> [Element] {
        let elements = storage[head...].map { $0! }
        storage.removeAll(keepingCapacity: false)
        head = 0
        return elements
    }

    /// Removes the elements for which `shouldRemove` is true and returns them, oldest first.
    mutating func remove(where shouldRemove: (Element) -> Bool) -> [Element] {
        var removed: [Element] = []
        var kept: [Element?] = []
        for case let element? in storage[head...] {
            if shouldRemove(element) { removed.append(element) } else { kept.append(element) }
        }
        if !removed.isEmpty {
            storage = kept
            head = 0
        }
        return removed
    }

    func contains(where predicate: (Element) -> Bool) -> Bool {
        storage[head...].contains { $0.map(predicate) ?? false }
    }

    func min<Value: Comparable>(of value: (Element) -> Value) -> Value? {
        var result: Value?
        for case let element? in storage[head...] {
            let candidate = value(element)
            if result.map({ candidate < $0 }) ?? true { result = candidate }
        }
        return result
    }
}
