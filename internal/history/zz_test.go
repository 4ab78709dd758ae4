package history
import ("testing";"time";"os";"github.com/anishathalye/porcupine")
func TestZZ(t *testing.T){
 ops,_ := ReadJSON(os.Getenv("H"))
 for _, p := range partitions(ops) { if p.key != os.Getenv("K") {continue}
  res, info := porcupine.CheckOperationsVerbose(p.model(), p.ops, time.Minute)
  t.Log(res, len(p.ops))
  for _, part := range info.PartialLinearizationsOperations() { for _, lin := range part { 
    t.Log("len", len(lin)); for _, o := range lin[max(0,len(lin)-5):] { t.Logf("%.4f %.4f %v %v %v", float64(o.Call)/1e9, float64(o.Return)/1e9, o.Input, o.Output, o.Metadata) } } }
 }
}
