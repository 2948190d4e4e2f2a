using QLoRA.Data;

namespace QLoRA.Training;

/// <summary>Where a run is in its data: the epoch and the next batch of that epoch.</summary>
/// <param name="Epoch">Epoch (0-based).</param>
/// <param name="Batch">Index of the next batch in the epoch's order.</param>
public readonly record struct DataPosition(int Epoch, int Batch);

/// <summary>
/// The training batches in order: each epoch is <see cref="Batching.EpochBatches"/> of (seed, epoch), so the
/// sequence is a pure function of the seed and a run resumes exactly from a <see cref="DataPosition"/>.
/// </summary>
public sealed class DataStream
{
    private readonly IReadOnlyList<TokenizedExample> _examples;
    private readonly int[] _lengths;
    private List<int[]> _epochBatches;

    /// <summary>Creates the stream at epoch 0, batch 0.</summary>
    public DataStream(IReadOnlyList<TokenizedExample> examples, int batchSize, int seed, bool groupByLength)
    {
        if (examples.Count == 0) throw new ArgumentException("no training examples", nameof(examples));
        _examples = examples;
        _lengths = examples.Select(e => e.Length).ToArray();
        BatchSize = batchSize;
        Seed = seed;
        GroupByLength = groupByLength;
        _epochBatches = Batching.EpochBatches(_lengths, batchSize, seed, 0, groupByLength);
    }

    /// <summary>Examples per batch.</summary>
    public int BatchSize { get; }

    /// <summary>The seed of the order.</summary>
    public int Seed { get; }

    /// <summary>Whether batches group similar lengths.</summary>
    public bool GroupByLength { get; }

    /// <summary>Batches per epoch.</summary>
    public int BatchesPerEpoch => _epochBatches.Count;

    /// <summary>The position of the next batch.</summary>
    public DataPosition Position { get; private set; }

    /// <summary>Moves to <paramref name="position"/> (from a checkpoint).</summary>
    public void Seek(DataPosition position)
    {
        if (position.Epoch < 0 || position.Batch < 0 || position.Batch > _epochBatches.Count)
            throw new ArgumentOutOfRangeException(nameof(position), position, $"not a position of this data ({_epochBatches.Count} batches per epoch)");
        if (position.Epoch != Position.Epoch) _epochBatches = Batching.EpochBatches(_lengths, BatchSize, Seed, position.Epoch, GroupByLength);
        Position = position;
    }

    /// <summary>The examples of the next batch (advancing to the next epoch when one ends).</summary>
    public IReadOnlyList<TokenizedExample> Next()
    {
        if (Position.Batch >= _epochBatches.Count) Seek(new DataPosition(Position.Epoch + 1, 0));
        var batch = _epochBatches[Position.Batch];
        Position = Position with { Batch = Position.Batch + 1 };
        return batch.Select(i => _examples[i]).ToList();
    }
}
